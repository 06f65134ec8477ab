"""DPA: directional preference alignment by rejection-sampling fine-tuning, and MAP × DPA palette-conditioned
SFT (see dpatrainer.py for the method, dpa.py for directions, weights and templates).

    # a two-head reward model (ridge probes on a frozen backbone, DPA's 0-100 scale)
    python rewardTrainer.py --objective=ridge --model_name_or_path=smollm2-135m --data_source_path=FILE \\
        --attributes=helpfulness,verbosity --output_dir=models/rm --output_scale=0-100
    # T iterations of sample -> score -> select -> train, with the θ-grid evaluation of every iterate
    python trainDPA.py --output_dir=runs/dpa --objectives=rm:models/rm --iterations=3 run
    # or stage by stage (each resumable; a finished stage is skipped)
    python trainDPA.py --output_dir=runs/dpa --objectives=rm:models/rm sample --iteration=1
    ... score --iteration=1; select --iteration=1; train --iteration=1; evaluate --iteration=1
    python trainDPA.py --output_dir=runs/dpa --objectives=rm:models/rm front     # the front per iteration
    # palette-conditioned SFT, then one-pass generation for a palette (checked by the solver first)
    python trainDPA.py --output_dir=runs/pal --mode=palette --objectives=sentiment,length --iterations=1 run
    python trainDPA.py --output_dir=runs/pal --mode=palette --objectives=sentiment,length generate_palette \\
        --c_list=0.4,20
At inference, `gendata.py --direction=-15` (or `--weights=97,-26`, `--objectives=...`) writes the same
system prompt as training; `generate_direction_grid --step=15` covers θ = −45°…45°.
"""
import json
import os

from mapalign import arguments
from mapalign import configs
from mapalign import dpa
from mapalign.errors import NotFoundError
from mapalign import dpatrainer
from mapalign.dpatrainer import DPAConfig


FIELDS = [f.name for f in configs.config_fields(DPAConfig)]


def settings(output_dir, given):
    """The run's settings: flags given on the command line, else the run folder's recorded ones (so a stage
    of an existing run needs only --output_dir), else DPAConfig's defaults. Normalises list flags."""
    path = os.path.join(str(output_dir), dpatrainer.CONFIG_FILE)
    stored = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            stored = {k: v for k, v in json.load(f)["config"].items() if k in FIELDS}
    out = dict(stored, **given)
    for name in ("objectives", "objective_names"):
        if out.get(name) is not None:
            out[name] = ",".join(arguments.str_list(out[name], name))
    return out


class TrainDPA:
    """Direction- (DPA) or palette-conditioned rejection-sampling fine-tuning; settings are recorded in
    {output_dir}/dpa_config.json and a run folder refuses other settings unless --overwrite=True. A flag left
    out takes the run folder's recorded value, else the default below (so `--output_dir=runs/dpa front`
    works on a finished run). The run's flags are DPAConfig's fields.

    Args:
        output_dir: run folder (iter{t}/samples|scored|selected.json, iter{t}/model, eval/iter{t}.json).
        overwrite: redo finished stages and replace a run folder's settings.
        progress: tqdm bars.
    """

    def __init__(self, output_dir, overwrite=False, progress=True, **flags):
        given = {k: v for k, v in flags.items() if v is not None}
        self.config = configs.config_from_flags(DPAConfig, settings(output_dir, given))
        self.output_dir, self.overwrite, self.progress = output_dir, overwrite, progress
        self._built = None

    def _trainer(self):
        """The run's DPATrainer, built when a command first needs it: fire constructs this class (and reads
        every attribute, properties included) before it shows --help, which must neither load the
        objectives nor write the run folder."""
        if self._built is None:
            self._built = dpatrainer.DPATrainer(self.config, self.output_dir, overwrite=self.overwrite,
                                                progress=self.progress)
        return self._built

    def sample(self, iteration=1):
        """K responses per training prompt from π_{t−1} under sampled directions -> iter{t}/samples.json."""
        return self._trainer().sample(iteration)

    def score(self, iteration=1):
        """Score iter{t}/samples.json on every objective -> iter{t}/scored.json."""
        return self._trainer().score(iteration)

    def select(self, iteration=1):
        """Argmax of (w/100)ᵀr per prompt (palette mode: resampling with softmax(λᵀr)) -> iter{t}/selected.json."""
        return self._trainer().select(iteration)

    def train(self, iteration=1):
        """SFT of π_{t−1} on the selections (assistant turn only, LoRA) -> iter{t}/model."""
        return self._trainer().train(iteration)

    def evaluate(self, iteration=0, directions=None):
        """π_t on the held-out prompts over the θ grid (or the given --directions, degrees), scored ->
        eval/iter{t}.json (0 = the starting model)."""
        angles = None if directions is None else arguments.float_list(directions, "directions")
        return self._trainer().evaluate(iteration, angles=angles)

    def conditioning(self, iteration=1):
        """Does π_t read the weights? The system-prompt swap test on iter{t}/selected.json for π_{t−1} and π_t:
        Δ (nats per prompt) = how much more likely the two responses selected under opposite weights are
        under their own system prompts than under each other's; ≈ 0 for a model that ignores the weights
        -> iter{t}/conditioning.json."""
        result = self._trainer().conditioning(iteration)
        for name, r in result.items():
            print(f"{name}: {dpa.describe_swap_gap(r)}")
        return result

    def run(self, evaluate=True):
        """All stages for t = 1..T (and the grid evaluation of π_0..π_T in direction mode)."""
        return self._trainer().run(evaluate=evaluate)

    def front(self):
        """Print the front of every evaluated iteration (mean per direction, words) and its direction control."""
        trainer = self._trainer()
        values = trainer.values
        t = 0
        while os.path.isfile(os.path.join(trainer.output_dir, "eval", f"iter{t}.json")):
            from mapalign import records
            points = dpatrainer.front(records.load_records(os.path.join(trainer.output_dir, "eval", f"iter{t}.json")),
                                      values)
            control = dpatrainer.direction_control(points, values)
            print(f"iteration {t}: Spearman(θ, ratio) = {control['spearman_ratio']:.3f}, "
                  f"Spearman(θ, {trainer.names[1]}) = {control['spearman_second']:.3f}")
            for p in points:
                print(f"  θ={p['angle']:6.1f} w={p['weights']}  " + "  ".join(
                    f"{n}={p['mean'][v]:.3f}±{p['se'][v]:.3f}" for n, v in zip(trainer.names, values))
                      + f"  words={p['words']:.1f}")
            t += 1
        if t == 0:
            raise NotFoundError(f"no evaluation in {trainer.output_dir}/eval; run evaluate first")

    def generate_palette(self, c_list, model=None, reference_file=None, use_suggested=False):
        """Check a palette with the solver on the reference samples (default iter1/scored.json) and generate
        one response per held-out prompt with the palette-conditioned model (default the last iterate);
        prints the realized levels. An infeasible palette is refused with the nearest feasible one."""
        from mapalign.evaluation import standard_error
        import numpy as np
        from mapalign import records
        trainer = self._trainer()
        path, result, written = trainer.generate_palette(c_list, model=model, reference_file=reference_file,
                                                         use_suggested=use_suggested)
        recs = records.load_records(path)
        print(f"palette {written}: {result.status} on the reference samples (λ = {np.round(result.lam, 4).tolist()})")
        for n, v, c in zip(trainer.names, trainer.values, written):
            x = np.array([r[v] for r in recs])
            print(f"  {n}: c = {c}, realized {x.mean():.4f} ± {standard_error(x):.4f}")
        return path


configs.document(TrainDPA, DPAConfig, flags_default=None, accept_unknown=False)
