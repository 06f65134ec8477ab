"""A local web app (Gradio) for MAP decoding with a value palette.

    python gendataGUI.py                      # SmolLM2, palette from results/smollm2-135m-builtin.json
    python gendataGUI.py --results_file=results/x.json --values=sentiment,harmlessness --port=7860

Pick the model (default the embedded SmolLM2-135M-Instruct), type a prompt, and generate from the
original model or the aligned one. The palette has one slider per value, ranging over the rewards in
a results file (default: the file's mean). Each slider move re-solves the palette on that file and
shows λ, the verdict (feasible / infeasible, with the suggested feasible palette when infeasible) and
the realized levels. "Aligned" decodes with MC resampling (decoding.mc_decode): M samples, one kept
with probability softmax(λᵀr); with an infeasible palette it uses the suggested palette's λ and says
so. The app listens on 127.0.0.1 only and Gradio's analytics are off.

Fixes against the original GUI (SPEC-MAP §8): λ is solved from the palette instead of typed as a
string, several values work, rewards get the prompts they need, and the app starts.
"""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402

from mapalign import decoding  # noqa: E402
from mapalign import records  # noqa: E402
from mapalign import sampling  # noqa: E402
from mapalign import solver  # noqa: E402
from mapalign import values as values_registry  # noqa: E402
from mapalign.models import DEFAULT_MODEL, format_prompts, load_model_and_tokenizer  # noqa: E402

DEFAULT_RESULTS = os.path.join("results", f"{DEFAULT_MODEL}-builtin.json")
MODES = ("Original", "Aligned (MC resampling)", "Aligned (best of N)")


class PaletteSession:
    """Everything the app holds: the palette data of a results file and the loaded models.

    Args:
        results_file: a results file with reward columns (records.py format): slider ranges and the
            solver's reference samples.
        values: the palette's values (default: the file's reward keys that name registered values).
        scorers: optional dict name -> f(prompts, continuations) (custom values; others load from the
            registry when first needed).
        per_prompt: solve with per-prompt normalisation (files with several samples per prompt).
        device, dtype: for loading models (models.load_model_and_tokenizer).
    """

    def __init__(self, results_file=DEFAULT_RESULTS, values=None, scorers=None, per_prompt=False, device=None,
                 dtype=None):
        if not os.path.isfile(results_file):
            raise records.RecordsError(f"palette results file not found: {results_file!r}. Make it with "
                                       "`python demo.py` (or gendata.py + rewardProcessor.py add_reward), or pass "
                                       "--results_file=<a results file with reward columns>.")
        recs = records.load_records(results_file)
        self.results_file = results_file
        if values is None:
            known = set(values_registry.REGISTRY) | set(scorers or {})
            values = [k for k in records.reward_keys(recs) if k in known and k not in decoding.MC_KEYS]
            if not values:
                raise records.RecordsError(
                    f"{results_file!r} has no reward columns of registered values (keys: {records.reward_keys(recs)}). "
                    "Add rewards first (python rewardProcessor.py --file_path=... add_reward --value=sentiment) "
                    "or name them with --values.")
        self.values = values_registry.expand_value_list(values)
        self.R = records.reward_matrix(recs, self.values, source=results_file)
        self.groups = records.prompt_groups(recs) if per_prompt else None
        self.low, self.high, self.mean = self.R.min(axis=1), self.R.max(axis=1), self.R.mean(axis=1)
        self.scorers = dict(scorers or {})
        self.device, self.dtype = device, dtype
        self._models = {}

    def load(self, model_name):
        """(model, tokenizer) of `model_name`, loaded once per name."""
        model_name = (model_name or DEFAULT_MODEL).strip()
        if model_name not in self._models:
            self._models[model_name] = load_model_and_tokenizer(model_name, device=self.device, dtype=self.dtype)
        return self._models[model_name]

    def solve(self, c):
        """PaletteResult of palette c (k,) on the results file."""
        return solver.solve_palette(self.R, np.asarray(c, dtype=np.float64), groups=self.groups)

    def decoding_lambda(self, c):
        """(λ to decode with, PaletteResult, note): the solution, or for an infeasible palette the
        solution of its suggested feasible palette."""
        result = self.solve(c)
        if result.status == solver.INFEASIBLE and result.suggested_palette is not None:
            suggested = self.solve(result.suggested_palette)
            return suggested.lam, result, "palette infeasible: decoded with the suggested feasible palette's λ"
        if result.status == solver.NOT_CONVERGED:
            return result.lam, result, f"solver did not converge ({result.message}): decoded with its last λ"
        return result.lam, result, ""

    def palette_report(self, *c):
        """Markdown: verdict, λ, realized levels and (when infeasible) the suggested palette."""
        c = np.asarray(c, dtype=np.float64)
        result = self.solve(c)
        lines = [f"**Palette: {result.status}**" + (f" ({result.message})" if result.message else ""), "",
                 "| value | c | λ | realized | mean of file |", "|---|---|---|---|---|"]
        for i, v in enumerate(self.values):
            lines.append(f"| {values_registry.display_name(v)} (`{v}`) | {c[i]:.4g} | {result.lam[i]:.4g} | "
                         f"{result.realized[i]:.4g} | {self.mean[i]:.4g} |")
        lines.append("")
        if self.groups is None:
            lines.append(f"KL(p_λ‖p0) = {result.kl:.4g} nats, effective sample size {result.ess:.1f} of "
                         f"{self.R.shape[1]} reference samples.")
        else:  # the per-prompt estimator: both are averages over prompts
            prompts = int(self.groups.max()) + 1
            lines.append(f"KL(p_λ‖p0) = {result.kl:.4g} nats (mean over prompts), effective sample size "
                         f"{result.ess:.1f} per prompt (mean over {prompts} prompts of "
                         f"{self.R.shape[1] / prompts:.1f} samples on average).")
        if result.status == solver.INFEASIBLE and result.suggested_palette is not None:
            lines.append("")
            lines.append("Suggested feasible palette: " + ", ".join(
                f"{v} = {x:.4g}" for v, x in zip(self.values, result.suggested_palette)))
        return "\n".join(lines)

    def generate(self, model_name, prompt, mode, MC_nsamples, temperature, top_k, num_beams, max_new_tokens, seed,
                 *c):
        """Generate for the app. Returns (text, markdown report)."""
        import torch
        if not prompt or not str(prompt).strip():
            return "", "Type a prompt first."
        model, tokenizer = self.load(model_name)
        if mode == MODES[0]:
            torch.manual_seed(int(seed))
            text = generate_original(model, tokenizer, prompt, temperature, top_k, num_beams, max_new_tokens)
            return text, "Sampled from the original model."
        if int(num_beams) != 1:
            return "", "Aligned decoding samples: set Num Beams to 1."
        lam, result, note = self.decoding_lambda(c)
        scorers = values_registry.load_scorers(self.values, device=str(model.device), scorers=self.scorers,
                                               basemodel_for_perplexity=(model, tokenizer))
        self.scorers.update(scorers)
        res, _ = decoding.mc_decode(model, tokenizer, [prompt], lam, self.values, int(MC_nsamples), scorers=scorers,
                                    max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                                    top_k=int(top_k), best_of_n=mode == MODES[2], seed=int(seed))
        r = res[0]
        chat = bool(getattr(tokenizer, "chat_template", None))
        text = prompt + " " + r["continuation"].strip() if chat else prompt + r["continuation"]
        lines = [f"Aligned with λ = {', '.join(f'{x:.4g}' for x in lam)} (palette {result.status})."]
        if note:
            lines.append(note + ".")
        lines.append(f"Kept sample {r['chosen_index']} of {int(MC_nsamples)}; effective sample size {r['mc_ess']:.2f}.")
        lines.append("Rewards of the output: " + ", ".join(f"{v} = {x:.4g}" for v, x in r["rewards"].items()))
        return text, "\n\n".join(lines)


def generate_original(model, tokenizer, prompt, temperature=1.0, top_k=50, num_beams=1, max_new_tokens=50):
    """One sample from the model (the original GUI's config); returns prompt + continuation."""
    chat = bool(getattr(tokenizer, "chat_template", None))
    out = sampling.sample(model, tokenizer, format_prompts(tokenizer, [prompt], use_chat_template=chat), 1,
                          max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_k=int(top_k),
                          num_beams=int(num_beams), add_special_tokens=not chat)
    continuation = out.texts[0][0]
    return prompt + " " + continuation.strip() if chat else prompt + continuation


_DEFAULT_MODEL_CACHE = {}


def generateGUI_from_original_model(prompt, temperature=1.0, top_k=50, num_beams=1, max_new_tokens=50):
    """Generate text from the original (default SmolLM2) model for a prompt; the seed's signature.

    Returns prompt + continuation (sampling with the given temperature, top_k, num_beams, max_new_tokens).
    """
    if "pair" not in _DEFAULT_MODEL_CACHE:
        _DEFAULT_MODEL_CACHE["pair"] = load_model_and_tokenizer(DEFAULT_MODEL)
    model, tokenizer = _DEFAULT_MODEL_CACHE["pair"]
    return generate_original(model, tokenizer, prompt, temperature, top_k, num_beams, max_new_tokens)


def build_app(session, model_name=DEFAULT_MODEL, model_choices=None):
    """The Gradio Blocks app over a PaletteSession."""
    import gradio as gr

    choices = list(dict.fromkeys([model_name, DEFAULT_MODEL] + list(model_choices or [])))
    with gr.Blocks(title="MAP: value-aligned decoding", analytics_enabled=False) as app:
        gr.Markdown("# MAP: value-aligned decoding\nSet a palette (target expected level per value), then "
                    "generate from the original or the aligned model. Palette data: "
                    f"`{session.results_file}` ({session.R.shape[1]} samples).")
        with gr.Row():
            with gr.Column():
                model_box = gr.Dropdown(choices, value=model_name, allow_custom_value=True, label="Model",
                                        elem_id="model")
                prompt_box = gr.Textbox(lines=2, label="Prompt", elem_id="prompt")
                mode = gr.Radio(list(MODES), value=MODES[1], label="Decode from", elem_id="mode")
                sliders = []
                for i, v in enumerate(session.values):
                    # ranges rounded outward to 4 decimals so the slider shows readable bounds
                    lo, hi = np.floor(session.low[i] * 1e4) / 1e4, np.ceil(session.high[i] * 1e4) / 1e4
                    step = max(round((hi - lo) / 1000, 6), 1e-6)
                    sliders.append(gr.Slider(float(lo), float(hi), value=float(session.mean[i]), step=step,
                                             label=f"{values_registry.display_name(v)} ({v})",
                                             elem_id=f"palette-{v}"))
                with gr.Accordion("Sampling", open=False):
                    mc = gr.Slider(1, 64, value=16, step=1, label="Num Monte Carlo Samples", elem_id="mc")
                    temperature = gr.Slider(0.05, 2.0, value=1.0, step=0.05, label="Temperature")
                    top_k = gr.Slider(1, 100, value=50, step=1, label="Top k")
                    beams = gr.Slider(1, 4, value=1, step=1, label="Num Beams")
                    max_new = gr.Slider(1, 200, value=50, step=1, label="Max New Tokens", elem_id="max-new")
                    seed = gr.Number(value=0, precision=0, label="Seed")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                report = gr.Markdown(session.palette_report(*session.mean), elem_id="palette-report")
                output = gr.Textbox(lines=8, label="Generated text", elem_id="output")
                info = gr.Markdown(elem_id="generation-info")
        for s in sliders:
            s.change(session.palette_report, inputs=sliders, outputs=report)
        button.click(session.generate, inputs=[model_box, prompt_box, mode, mc, temperature, top_k, beams, max_new,
                                               seed] + sliders, outputs=[output, info])
    return app


def launch(app, host="127.0.0.1", port=7860, block=True):
    """Serve `app` on host:port (no share link, no server-side rendering, system fonts only, so the
    page needs nothing from the internet). block=False returns at once (tests). Returns the URL."""
    import gradio as gr
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])
    _, url, _ = app.queue().launch(server_name=host, server_port=int(port), share=False, ssr_mode=False, theme=theme,
                                   prevent_thread_lock=not block, quiet=not block, footer_links=[])
    return url


def main(model_name=DEFAULT_MODEL, results_file=DEFAULT_RESULTS, values=None, plugin=None, per_prompt=False,
         host="127.0.0.1", port=7860, device=None, dtype=None):
    """Start the app on http://{host}:{port}.

    Args:
        model_name: initial model (models.py names: smollm2-135m, a folder, a cached hub id).
        results_file: results file with reward columns; sets the sliders' ranges and defaults and is what the
            palette is solved on (make it with demo.py, or gendata.py + rewardProcessor.py).
        values: palette values, comma-separated (default: the file's reward columns of registered values).
        plugin: Python file(s) registering custom values (values.load_plugins).
        per_prompt: per-prompt normalised solver (for files with several samples per prompt).
        host: interface to listen on (default 127.0.0.1: this machine only).
        port: TCP port.
        device, dtype: model placement ("cuda", "bfloat16", ...).
    """
    values_registry.load_plugins(plugin)
    session = PaletteSession(results_file, values=values, per_prompt=per_prompt, device=device, dtype=dtype)
    launch(build_app(session, model_name=model_name), host, port)
