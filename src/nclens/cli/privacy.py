"""``nclens dp-simulate``, ``nclens dp-experiment``, ``nclens dp-feature-shift``: NC meets differential privacy.

``dp-simulate`` and ``dp-feature-shift`` are solvers (one result, printed and optionally written as
JSON); ``dp-experiment`` is a thin alias of ``nclens run`` for the privacy configs.

Example:
    $ nclens dp-simulate --classes 10 --dim 1000 --samples 100 --noise-multiplier 5 --clip 1 \\
          --shift-norm 0.5 --trials 2000 --seed 0 --json sim.json
    $ nclens dp-experiment dp_threshold --set dims=[10,1000] --out runs/dp_threshold
    $ nclens dp-feature-shift feats.npz --json shift.json
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from nclens.cli._common import user_errors

__all__ = ["register"]


def _refuse_overwriting_inputs(out: Path, inputs: list[Path], option: str) -> None:
    """``option`` may not name an input file (it would replace the input by the output)."""
    try:
        from nclens.core.io import check_output_path
    except ImportError:  # the shared check of nclens.core.io is not on this branch yet
        for path in inputs:
            same = out.resolve() == path.resolve() or (out.exists() and path.exists() and os.path.samefile(out, path))
            if same:
                raise ValueError(f"{option} {str(out)!r} is the input file {str(path)!r}; it would be replaced by "
                                 f"the output — choose another path") from None
        return
    check_output_path(out, inputs, option=option)


def register(app: typer.Typer) -> None:
    @app.command("dp-simulate")
    def dp_simulate(
        classes: int = typer.Option(10, "--classes", help="K, number of classes."),
        dim: int = typer.Option(100, "--dim", help="p, feature dimension (>= K-1)."),
        samples: int = typer.Option(100, "--samples", help="n, private training samples (K | n if balanced)."),
        noise_multiplier: float = typer.Option(5.0, "--noise-multiplier", help="σ of NoisyGD."),
        clip: float = typer.Option(1.0, "--clip", help="C, per-sample gradient clipping norm."),
        perturb: float = typer.Option(0.0, "--perturb", help="τ, per-coordinate perturbation std (norm τ√p)."),
        shift_norm: float | None = typer.Option(None, "--shift-norm",
                                                help="β, a perturbation of norm β whatever p (std β/√p)."),
        perturb_kind: str = typer.Option("gaussian", "--perturb-kind",
                                         help="'gaussian' (per sample) or 'structured' (per class; with "
                                              "--shift-norm: shifts of norm β in the ETF's span)."),
        offset: float = typer.Option(0.0, "--offset", help="Norm of a common shift orthogonal to the ETF."),
        pca: int | None = typer.Option(None, "--pca", help="PCA to d dims, fitted on a public sample."),
        normalise: bool = typer.Option(False, "--normalise", help="Scale features to unit norm."),
        loss: str = typer.Option("ce", "--loss", help="ce | mse (mean over N·K) | mse_sum | mse_half (nclens losses)."),
        imbalance: float = typer.Option(1.0, "--imbalance", help="Largest / smallest class size (1 = balanced)."),
        init_norm: float = typer.Option(0.0, "--init-norm",
                                        help="‖W0‖_F of a fixed random initial head in the span of the class "
                                             "centres (0 = zero)."),
        steps: int = typer.Option(1, "--steps", help="NoisyGD steps (the closed form needs 1)."),
        lr: float = typer.Option(1.0, "--lr", help="Step size."),
        trials: int = typer.Option(1000, "--trials", help="Monte Carlo draws of the DP noise."),
        test_per_class: int = typer.Option(10, "--test-per-class", help="Test samples per class."),
        public_samples: int | None = typer.Option(None, "--public-samples", help="Public samples for PCA."),
        delta: float = typer.Option(1e-5, "--delta", help="δ of the reported ε."),
        seed: int = typer.Option(0, "--seed", help="Seed of data and noise."),
        json_out: Path | None = typer.Option(None, "--json", help="Write the result as JSON."),
        threads: int = typer.Option(1, "--threads", min=1, help="torch CPU threads."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    ) -> None:
        """NoisyGD on layer-peeled ETF features: Monte Carlo test error, closed forms and ε.

        Closed form (one step, exactly collapsed features): error = P(max_{k≠y}(ξ_k − ξ_y) > t_{yk}),
        independent of p; exact ETF, balanced, CE: t = 1/((K−1)s), s = σC/n (Wang, Zhu, Su & Wang, ICML 2024).
        With --shift-norm the p → ∞ form is reported too.
        """
        from nclens.core.env import thread_limit
        from nclens.core.io import write_json
        from nclens.privacy.simulate import SimulationConfig, simulate_noisy_gd

        with user_errors(), thread_limit(threads):
            cfg = SimulationConfig(
                num_classes=classes, dim=dim, samples=samples, noise_multiplier=noise_multiplier, clip=clip,
                perturb=perturb, perturb_kind=perturb_kind, shift_norm=shift_norm, offset=offset, pca=pca,
                normalise=normalise, loss=loss, imbalance=imbalance, init_norm=init_norm, steps=steps, lr=lr,
                trials=trials, test_per_class=test_per_class, public_samples=public_samples, delta=delta, seed=seed,
            )
            result = simulate_noisy_gd(cfg, progress=progress and not quiet)
            if json_out is not None:
                write_json(json_out, result.to_dict())
        if not quiet:
            closed, large = result.error_closed_form, result.error_large_p
            typer.echo(
                f"error {result.error:.4f} ± {result.error_stderr:.4f} (Monte Carlo, {trials} trials)"
                + (f"; closed form {closed:.4f}" if closed is not None else "")
                + (f"; p→∞ form {large:.4f}" if large is not None else "")
                + f"; non-private {result.error_nonprivate:.4f}; ε = {result.epsilon:.4g} at δ = {delta:g}"
                + f"; feature shift {result.feature_shift:.4g}"
            )

    @app.command("dp-experiment")
    def dp_experiment(
        config: str = typer.Argument(..., help="a shipped config (dp_dimension, dp_threshold, dp_digits, ...) or YAML"),
        set_: list[str] = typer.Option([], "--set", help="override, e.g. --set dims=[10,1000] (repeatable)"),
        out: Path | None = typer.Option(None, "--out", help="run folder (default runs/<name>-<time>)"),
        resume: bool = typer.Option(False, "--resume", help="continue the run in --out (finished cells are kept)"),
        report: bool = typer.Option(True, "--report/--no-report", help="write figures and report.html"),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars"),
        threads: int = typer.Option(1, "--threads", min=1, help="torch CPU threads (1 is fastest for these sizes)"),
    ) -> None:
        """Run a differential-privacy experiment (nclens run for kinds dp-dimension, dp-threshold, dp-features)."""
        from nclens.cli.run import execute

        execute(config, set_, out=out, resume=resume, progress=progress, threads=threads, report=report)

    @app.command("dp-feature-shift")
    def dp_feature_shift(
        features: Path = typer.Argument(..., help="A .npz / .safetensors feature file ('features', 'labels')."),
        normalise: str = typer.Option("global", "--normalise", help="'global' (centre, RMS radius) or 'sample'."),
        json_out: Path | None = typer.Option(None, "--json", help="Write the shift and the NC metrics as JSON."),
        threads: int = typer.Option(1, "--threads", min=1, help="torch CPU threads."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing."),
    ) -> None:
        """Feature shift of a feature file: distance to the aligned ideal simplex ETF, beside nc1 etc."""
        from nclens.core.env import thread_limit
        from nclens.core.features import load_feature_file
        from nclens.core.io import write_json
        from nclens.core.metrics import compute_metrics
        from nclens.core.stats import ClassStats
        from nclens.privacy.shift import feature_shift

        with user_errors(), thread_limit(threads):
            if json_out is not None:
                _refuse_overwriting_inputs(json_out, [features], "--json")
            data = load_feature_file(features)
            if data.labels.ndim != 1:
                raise ValueError("feature shift needs single-label features (labels of shape (N,))")
            shift = feature_shift(data.features, data.labels, normalise=normalise)
            metrics = compute_metrics(ClassStats().update(data.features, data.labels))
            record = {**shift.to_dict(), **metrics}
            if json_out is not None:
                write_json(json_out, record)
        if not quiet:
            typer.echo(
                f"feature shift {shift.rms:.4g} (means {shift.means:.4g}, within {shift.within:.4g}, "
                f"max {shift.max:.4g}); nc1 {metrics.get('nc1', float('nan')):.4g}"
            )
