// A diagram wider than its column scrolls sideways (extra.css). Mermaid lays
// classes out around the middle, so start the scroll there, not at the empty
// left edge. Material replaces each pre.mermaid with a rendered div.mermaid
// asynchronously; look for them for a few seconds after each page is shown.
document$.subscribe(() => {
  let tries = 0;
  const timer = setInterval(() => {
    for (const diagram of document.querySelectorAll("div.mermaid:not([data-centred])")) {
      diagram.scrollLeft = (diagram.scrollWidth - diagram.clientWidth) / 2;
      diagram.setAttribute("data-centred", "");
    }
    if (++tries > 50 || !document.querySelector("pre.mermaid")) clearInterval(timer);
  }, 100);
});
