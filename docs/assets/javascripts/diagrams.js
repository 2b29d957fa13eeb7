// Diagrams keep their natural size (the mermaid blocks say useMaxWidth:
// false). One wider than its column is shrunk to fit it where that keeps its
// text at 12 px or more (the class diagram on a desktop screen); otherwise,
// as on a phone, it stays full size, starts at its left edge and scrolls
// sideways, with a visible bar. A button switches between the two, and the
// diagram itself takes keyboard focus, so the arrow keys pan it.
//
// Material replaces each pre.mermaid with a rendered div.mermaid
// asynchronously; look for them for a few seconds after each page is shown.
(function () {
  const MIN_SCALE = 12 / 16; // mermaid draws its text at 16 px
  const LABELS = {
    en: { fit: "Fit to width", full: "Actual size", region: "diagram" },
    zh: { fit: "缩放到页面宽度", full: "原始大小", region: "图" },
  };

  function setup(diagram) {
    diagram.setAttribute("data-sized", "");
    const natural = diagram.scrollWidth;
    if (natural <= diagram.clientWidth + 1) return; // fits as it is
    const lang = document.documentElement.lang.startsWith("zh") ? "zh" : "en";
    const text = LABELS[lang];
    diagram.tabIndex = 0;
    diagram.setAttribute("role", "region");
    diagram.setAttribute("aria-label", text.region);
    const button = document.createElement("button");
    button.type = "button";
    button.className = "md-button mha-diagram-zoom";
    diagram.before(button);
    const apply = (fit) => {
      const scale = Math.min(1, diagram.clientWidth / natural);
      diagram.style.zoom = fit ? String(scale) : "";
      diagram.dataset.fit = String(fit);
      button.textContent = fit ? text.full : text.fit;
      button.setAttribute("aria-pressed", String(fit));
      // Start at the left edge: the reader scrolls right from the first box
      // instead of landing in the middle with both edges cut.
      diagram.scrollLeft = 0;
    };
    button.addEventListener("click", () => apply(diagram.dataset.fit !== "true"));
    apply(diagram.clientWidth / natural >= MIN_SCALE);
  }

  document$.subscribe(() => {
    let tries = 0;
    const timer = setInterval(() => {
      for (const diagram of document.querySelectorAll("div.mermaid:not([data-sized])")) setup(diagram);
      if (++tries > 50 || !document.querySelector("pre.mermaid")) clearInterval(timer);
    }, 100);
  });
})();
