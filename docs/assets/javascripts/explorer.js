// The attention explorer: the look-up transformer of
// docs/_scripts/lookup_model.py, run in the page in plain JavaScript, with its
// weights from assets/explorer/lookup.json (written at build time by
// docs/_hooks/explorer_weights.py). Nothing is fetched from another host.
//
// Testing hooks: each token of the input is an element with
// data-token="<index>"; while a token is selected, every token element also
// carries data-weight="<value>": the weight with which the selected token
// attends to it, for the chosen layer and head. The root's data-ready holds
// the eight digits shown; data-explorer="expected-<question>" and
// "output-<question>" hold the eight expected and the eight model answers.
(function () {
  // Resolve the weights next to this script, whatever the site's base URL.
  const script = document.currentScript;
  const weightsUrl = new URL("../explorer/lookup.json", script ? script.src : location.href);
  let modelPromise = null;

  // --- the task: lookup_model.answers and lookup_model.valid ---------------

  // "3 1 4 1, 5 3 4 5" or "31415345" -> [3, 1, 4, 1, 5, 3, 4, 5]; null if not 8 digits.
  function parse(text) {
    const compact = text.replace(/[\s,;]+/g, "");
    return /^[0-9]{8}$/.test(compact) ? [...compact].map(Number) : null;
  }

  // A puzzle: every digit in it appears exactly twice.
  const valid = (digits) => digits.every((t) => digits.filter((u) => u === t).length === 2);

  // Each position's two answers: the digit before it (position 0 looks round
  // to the last), and where its twin, the other copy of its digit, stands.
  const answers = (digits) => ({
    before: digits.map((_, i) => digits[(i + digits.length - 1) % digits.length]),
    twin: digits.map((t, i) => digits.findIndex((u, j) => u === t && j !== i)),
  });

  // --- the model: the same arithmetic as lookup_model.Lookup ---------------

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
    // The read-out's scores, question after question (cfg.questions): each answer is its best score.
    const scores = x.map((r) => linear(layerNorm(r, W["norm.weight"], W["norm.bias"]), W["readout.weight"], W["readout.bias"]));
    const output = {};
    let start = 0;
    for (const [question, n] of Object.entries(cfg.questions)) {
      output[question] = scores.map((row) => {
        const part = row.slice(start, start + n);
        return part.indexOf(Math.max(...part));
      });
      start += n;
    }
    return { output, weights };
  }

  // --- the page --------------------------------------------------------------

  // One colour scale for one quantity: a digit's background and a heatmap
  // cell both show a weight through --weight (extra.css); dark text turns
  // light where the colour is strong.
  function paint(el, weight) {
    el.style.setProperty("--weight", weight.toFixed(4));
    el.classList.toggle("explorer-strong", weight > 0.5);
  }

  function mount(root) {
    const $ = (name) => root.querySelector(`[data-explorer=${name}]`);
    const examples = $("examples"), typed = $("input"), problem = $("problem");
    const tokens = $("tokens"), heatmap = $("heatmap"), layerSelect = $("layer"), headSelect = $("head");
    const layer = () => (layerSelect ? +layerSelect.value : 0); // a one-layer model has no layer control
    const typedOption = examples.querySelector("option[value='']");
    const state = { result: null, digits: [], selected: null };
    const label = (i) => `${i}: ${state.digits[i]}`; // position (from 0, as the code indexes it) and digit

    function paintSelection() {
      const { result, selected } = state;
      const w = result && result.weights[layer()][+headSelect.value];
      for (const el of tokens.querySelectorAll("[data-token]")) {
        const j = +el.dataset.token;
        el.setAttribute("aria-pressed", String(j === selected));
        if (selected === null || !w) {
          el.removeAttribute("data-weight");
          paint(el, 0);
        } else {
          el.dataset.weight = w[selected][j].toFixed(6);
          paint(el, w[selected][j]);
        }
      }
      for (const row of heatmap.querySelectorAll("tr[data-row]")) {
        row.classList.toggle("selected", +row.dataset.row === selected);
      }
    }

    function drawHeatmap() {
      const w = state.result.weights[layer()][+headSelect.value];
      const head = `<tr><th scope="col"></th>${w.map((_, j) => `<th scope="col" aria-label="${label(j)}"><small>${j}</small><br>${state.digits[j]}</th>`).join("")}</tr>`;
      const rows = w.map((row, i) => `<tr data-row="${i}"><th scope="row">${label(i)}</th>${row
        .map((v) => `<td style="--weight:${v.toFixed(4)}"${v > 0.5 ? ' class="strong"' : ""} title="${v.toFixed(3)}">${Math.round(v * 100)}</td>`)
        .join("")}</tr>`);
      // A class of its own: Material's rules for plain tables would stretch it.
      heatmap.innerHTML = `<table class="explorer-grid">${head}${rows.join("")}</table>`;
    }

    function select(i) {
      state.selected = i;
      paintSelection();
    }

    const cells = (digits, right) => digits
      .map((t, i) => `<span class="explorer-cell${right && right[i] !== t ? " wrong" : ""}">${t}</span>`)
      .join("");

    async function show(digits) {
      const model = await (modelPromise ||= fetch(weightsUrl).then((r) => r.json()));
      state.digits = digits;
      state.result = run(model, digits);
      tokens.innerHTML = digits
        .map((t, i) => `<button type="button" class="explorer-token" data-token="${i}" aria-pressed="false" `
          + `aria-label="${label(i)}"><small>${i}</small>${t}</button>`)
        .join("");
      for (const el of tokens.querySelectorAll("[data-token]")) {
        const i = +el.dataset.token;
        el.addEventListener("mouseenter", () => select(i));
        el.addEventListener("focus", () => select(i));
        el.addEventListener("click", () => select(i));
      }
      const right = answers(digits);
      for (const [question, values] of Object.entries(right)) {
        const got = state.result.output[question];
        $(`expected-${question}`).innerHTML = cells(values);
        $(`output-${question}`).innerHTML = cells(got, values);
        $(`output-${question}`).dataset.correct = String(got.every((t, i) => t === values[i]));
      }
      drawHeatmap();
      select(state.selected);
      root.dataset.ready = digits.join("");
    }

    examples.addEventListener("change", () => {
      if (!examples.value) return;
      typed.value = "";
      problem.hidden = true;
      show(parse(examples.value));
    });
    typed.addEventListener("input", () => {
      const digits = parse(typed.value);
      const ok = digits !== null && valid(digits);
      // Say what is wrong only once the reader has typed eight digits or more.
      problem.hidden = ok || typed.value.replace(/[^0-9]/g, "").length < 8;
      if (!ok) return;
      // The dropdown names what is shown: the example typed, or "your input".
      const match = [...examples.options].find((o) => o.value === digits.join(""));
      examples.value = match ? match.value : "";
      typedOption.hidden = Boolean(match);
      show(digits);
    });
    for (const control of [layerSelect, headSelect].filter(Boolean)) {
      control.addEventListener("change", () => {
        drawHeatmap();
        paintSelection();
      });
    }
    show(parse(examples.value));
  }

  document$.subscribe(() => {
    for (const root of document.querySelectorAll(".mha-explorer:not([data-mounted])")) {
      root.dataset.mounted = "";
      mount(root);
    }
  });
})();
