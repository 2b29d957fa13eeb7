// The attention explorer: the digit-reversing transformer of
// docs/_scripts/demo_model.py, run in the page in plain JavaScript, with its
// weights from assets/explorer/reverse.json (written at build time by
// docs/_hooks/explorer_weights.py). Nothing is fetched from another host.
//
// Testing hooks: each token of the input is an element with
// data-token="<index>"; while a token is selected, every token element also
// carries data-weight="<value>": the weight with which the selected token
// attends to it, for the chosen layer and head.
(function () {
  // Resolve the weights next to this script, whatever the site's base URL.
  const script = document.currentScript;
  const weightsUrl = new URL("../explorer/reverse.json", script ? script.src : location.href);
  let modelPromise = null;

  // --- the model: the same arithmetic as demo_model.Reverser ---------------

  const linear = (x, w, b) => w.map((row, o) => row.reduce((s, wi, i) => s + wi * x[i], b ? b[o] : 0));

  function layerNorm(x, weight, bias) {
    const mean = x.reduce((a, b) => a + b, 0) / x.length;
    const variance = x.reduce((a, b) => a + (b - mean) ** 2, 0) / x.length;
    const inv = 1 / Math.sqrt(variance + 1e-5);
    return x.map((v, i) => (v - mean) * inv * weight[i] + bias[i]);
  }

  function softmax(row) {
    const max = Math.max(...row);
    const e = row.map((v) => Math.exp(v - max));
    const sum = e.reduce((a, b) => a + b, 0);
    return e.map((v) => v / sum);
  }

  // Self-attention over rows x (s, h), no mask: returns the output and the
  // weights (n_h, s, s), as MultiHeadAttention(..., need_weights=True) does.
  function attention(x, p, heads) {
    const q = x.map((r) => linear(r, p["q_proj.weight"], p["q_proj.bias"]));
    const k = x.map((r) => linear(r, p["k_proj.weight"], p["k_proj.bias"]));
    const v = x.map((r) => linear(r, p["v_proj.weight"], p["v_proj.bias"]));
    const width = q[0].length, d = width / heads, s = x.length;
    const weights = [];
    const context = x.map(() => new Array(width).fill(0));
    for (let h = 0; h < heads; h++) {
      const lo = h * d;
      const w = [];
      for (let i = 0; i < s; i++) {
        const scores = [];
        for (let j = 0; j < s; j++) {
          let dot = 0;
          for (let c = 0; c < d; c++) dot += q[i][lo + c] * k[j][lo + c];
          scores.push(dot / Math.sqrt(d));
        }
        const row = softmax(scores);
        w.push(row);
        for (let j = 0; j < s; j++) for (let c = 0; c < d; c++) context[i][lo + c] += row[j] * v[j][lo + c];
      }
      weights.push(w);
    }
    const out = context.map((r) => linear(r, p["out_proj.weight"], p["out_proj.bias"]));
    return { out, weights };
  }

  function run(model, digits) {
    const W = model.weights, cfg = model.config;
    let x = digits.map((t, i) => W["tokens.weight"][t].map((v, c) => v + W.positions[i][c]));
    const weights = [];
    for (let l = 0; l < cfg.layers; l++) {
      const p = (name) => W[`blocks.${l}.${name}`];
      const normed = x.map((r) => layerNorm(r, p("norm1.weight"), p("norm1.bias")));
      const attn = attention(normed, {
        "q_proj.weight": p("attention.q_proj.weight"), "q_proj.bias": p("attention.q_proj.bias"),
        "k_proj.weight": p("attention.k_proj.weight"), "k_proj.bias": p("attention.k_proj.bias"),
        "v_proj.weight": p("attention.v_proj.weight"), "v_proj.bias": p("attention.v_proj.bias"),
        "out_proj.weight": p("attention.out_proj.weight"), "out_proj.bias": p("attention.out_proj.bias"),
      }, cfg.heads);
      weights.push(attn.weights);
      x = x.map((r, i) => r.map((v, c) => v + attn.out[i][c]));
      x = x.map((r) => {
        const hidden = linear(layerNorm(r, p("norm2.weight"), p("norm2.bias")), p("mlp.0.weight"), p("mlp.0.bias"))
          .map((v) => Math.max(0, v));
        const mlp = linear(hidden, p("mlp.2.weight"), p("mlp.2.bias"));
        return r.map((v, c) => v + mlp[c]);
      });
    }
    const logits = x.map((r) => linear(layerNorm(r, W["norm.weight"], W["norm.bias"]), W["readout.weight"], W["readout.bias"]));
    const output = logits.map((row) => row.indexOf(Math.max(...row)));
    return { output, weights };
  }

  // --- the page --------------------------------------------------------------

  function mount(root) {
    const examples = root.querySelector("[data-explorer=examples]");
    const typed = root.querySelector("[data-explorer=input]");
    const problem = root.querySelector("[data-explorer=problem]");
    const tokens = root.querySelector("[data-explorer=tokens]");
    const output = root.querySelector("[data-explorer=output]");
    const heatmap = root.querySelector("[data-explorer=heatmap]");
    const layerSelect = root.querySelector("[data-explorer=layer]");
    const headSelect = root.querySelector("[data-explorer=head]");
    const state = { result: null, digits: [], selected: null };

    function paintSelection() {
      const { result, selected } = state;
      const w = result && result.weights[+layerSelect.value][+headSelect.value];
      for (const el of tokens.querySelectorAll("[data-token]")) {
        const j = +el.dataset.token;
        el.setAttribute("aria-pressed", String(j === selected));
        if (selected === null || !w) {
          el.removeAttribute("data-weight");
          el.style.removeProperty("--weight");
        } else {
          el.dataset.weight = w[selected][j].toFixed(6);
          el.style.setProperty("--weight", w[selected][j].toFixed(4));
        }
      }
      for (const row of heatmap.querySelectorAll("tr[data-row]")) {
        row.classList.toggle("selected", +row.dataset.row === selected);
      }
    }

    function drawHeatmap() {
      const w = state.result.weights[+layerSelect.value][+headSelect.value];
      const d = state.digits;
      const head = `<tr><th scope="col"></th>${d.map((t) => `<th scope="col">${t}</th>`).join("")}</tr>`;
      const rows = w.map((row, i) => `<tr data-row="${i}"><th scope="row">${d[i]}</th>${row
        .map((v) => `<td style="--weight:${v.toFixed(4)}"${v > 0.5 ? ' class="strong"' : ""} title="${v.toFixed(3)}">${Math.round(v * 100)}</td>`)
        .join("")}</tr>`);
      // A class of its own: Material's rules for plain tables would stretch it.
      heatmap.innerHTML = `<table class="explorer-grid">${head}${rows.join("")}</table>`;
    }

    function select(i) {
      state.selected = i;
      paintSelection();
    }

    async function show(text) {
      const digits = [...text].map(Number);
      const model = await (modelPromise ||= fetch(weightsUrl).then((r) => r.json()));
      state.digits = digits;
      state.result = run(model, digits);
      tokens.innerHTML = digits
        .map((t, i) => `<button type="button" class="explorer-token" data-token="${i}" aria-pressed="false">${t}</button>`)
        .join("");
      for (const el of tokens.querySelectorAll("[data-token]")) {
        const i = +el.dataset.token;
        el.addEventListener("mouseenter", () => select(i));
        el.addEventListener("focus", () => select(i));
        el.addEventListener("click", () => select(i));
      }
      output.textContent = state.result.output.join(" ");
      drawHeatmap();
      select(state.selected);
      root.dataset.ready = text;
    }

    examples.addEventListener("change", () => {
      typed.value = "";
      problem.hidden = true;
      show(examples.value);
    });
    typed.addEventListener("input", () => {
      const value = typed.value.trim();
      const ok = new RegExp(`^[0-9]{${8}}$`).test(value);
      problem.hidden = ok || value.length < 8;
      if (ok) show(value);
    });
    for (const control of [layerSelect, headSelect]) {
      control.addEventListener("change", () => {
        drawHeatmap();
        paintSelection();
      });
    }
    show(examples.value);
  }

  document$.subscribe(() => {
    for (const root of document.querySelectorAll(".mha-explorer:not([data-mounted])")) {
      root.dataset.mounted = "";
      mount(root);
    }
  });
})();
