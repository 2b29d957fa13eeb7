// Render the formulas that pymdownx.arithmatex marks, with the self-hosted KaTeX.
// Material's instant navigation replaces pages without reloading, so render on
// every page it shows (document$), not only on the first load.
document$.subscribe(({ body }) => {
  renderMathInElement(body, {
    delimiters: [
      { left: "$$", right: "$$", display: true },
      { left: "$", right: "$", display: false },
      { left: "\\(", right: "\\)", display: false },
      { left: "\\[", right: "\\]", display: true },
    ],
  });
});
