"""``nclens dp-simulate``, ``nclens dp-experiment``, ``nclens dp-feature-shift``: NC meets differential privacy.

Example:
    $ nclens dp-simulate --classes 10 --dim 1000 --samples 100 --noise-multiplier 5 --clip 1 \\
          --trials 2000 --seed 0 --json sim.json
    $ nclens dp-experiment experiments/dp_dimension.yaml --out runs/dp_dimension
    $ nclens dp-feature-shift feats.npz --json shift.json
"""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["register"]


def _fail(message: str, code: int = 2) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    @app.command("dp-simulate")
    def dp_simulate(
        classes: int = typer.Option(10, "--classes", help="K, number of classes."),
        dim: int = typer.Option(100, "--dim", help="p, feature dimension (>= K-1)."),
        samples: int = typer.Option(100, "--samples", help="n, private training samples (a multiple of K)."),
        noise_multiplier: float = typer.Option(5.0, "--noise-multiplier", help="σ of NoisyGD."),
        clip: float = typer.Option(1.0, "--clip", help="C, per-sample gradient clipping norm."),
        perturb: float = typer.Option(0.0, "--perturb", help="τ, perturbation scale (0 = exact ETF features)."),
        perturb_kind: str = typer.Option("gaussian", "--perturb-kind", help="'gaussian' (per sample) or 'structured'."),
        offset: float = typer.Option(0.0, "--offset", help="Norm of a common shift orthogonal to the ETF."),
        pca: int | None = typer.Option(None, "--pca", help="PCA to d dims, fitted on a public sample."),
        normalise: bool = typer.Option(False, "--normalise", help="Scale features to unit norm."),
        steps: int = typer.Option(1, "--steps", help="NoisyGD steps (the closed form needs 1)."),
        lr: float = typer.Option(1.0, "--lr", help="Step size."),
        trials: int = typer.Option(1000, "--trials", help="Monte Carlo draws of the DP noise."),
        test_per_class: int = typer.Option(10, "--test-per-class", help="Test samples per class."),
        public_samples: int | None = typer.Option(None, "--public-samples", help="Public samples for PCA."),
        delta: float = typer.Option(1e-5, "--delta", help="δ of the reported ε."),
        seed: int = typer.Option(0, "--seed", help="Seed of data and noise."),
        json_out: Path | None = typer.Option(None, "--json", help="Write the result as JSON."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    ) -> None:
        """NoisyGD on layer-peeled ETF features: Monte Carlo test error, closed form and ε.

        Closed form (one step from zero, exact features): error = P(max_{k≠y}(ξ_k − ξ_y) > 1/((K−1)s)),
        s = σC/n, independent of p (Wang, Zhu, Su & Wang, ICML 2024).
        """
        from nclens.core.io import write_json
        from nclens.privacy.simulate import SimulationConfig, simulate_noisy_gd

        try:
            cfg = SimulationConfig(
                num_classes=classes, dim=dim, samples=samples, noise_multiplier=noise_multiplier, clip=clip,
                perturb=perturb, perturb_kind=perturb_kind, offset=offset, pca=pca, normalise=normalise,
                steps=steps, lr=lr, trials=trials, test_per_class=test_per_class, public_samples=public_samples,
                delta=delta, seed=seed,
            )
            result = simulate_noisy_gd(cfg, progress=progress and not quiet)
        except (ValueError, TypeError, MemoryError) as exc:
            _fail(str(exc))
        record = result.to_dict()
        if json_out is not None:
            write_json(json_out, record)
        if not quiet:
            closed = result.error_closed_form
            typer.echo(
                f"error {result.error:.4f} ± {result.error_stderr:.4f} (Monte Carlo, {trials} trials)"
                + (f"; closed form {closed:.4f}" if closed is not None else "")
                + f"; non-private {result.error_nonprivate:.4f}; ε = {result.epsilon:.4g} at δ = {delta:g}"
                + f"; feature shift {result.feature_shift:.4g}"
            )

    @app.command("dp-experiment")
    def dp_experiment(
        config: Path = typer.Argument(..., help="YAML config with kind: dimension | real-features."),
        out: Path = typer.Option(..., "--out", help="Run folder (rerun on the same folder to resume)."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    ) -> None:
        """Run a differential-privacy experiment (accuracy vs dimension, or private fine-tuning of real features)."""
        from nclens.privacy.experiment import run_experiment

        try:
            summary = run_experiment(config, out, progress=progress)
        except (FileNotFoundError, ValueError, TypeError) as exc:
            _fail(str(exc))
        n = len(summary.get("rows", summary.get("accuracy", [])))
        typer.echo(f"wrote {out} ({n} summary rows): summary.json, CSV tables and PNG figures")

    @app.command("dp-feature-shift")
    def dp_feature_shift(
        features: Path = typer.Argument(..., help="A .npz / .safetensors feature file ('features', 'labels')."),
        normalise: str = typer.Option("global", "--normalise", help="'global' (centre, RMS radius) or 'sample'."),
        json_out: Path | None = typer.Option(None, "--json", help="Write the shift and the NC metrics as JSON."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing."),
    ) -> None:
        """Feature shift of a feature file: distance to the aligned ideal simplex ETF, beside nc1 etc."""
        from nclens.core.features import load_feature_file
        from nclens.core.io import write_json
        from nclens.core.metrics import compute_metrics
        from nclens.core.stats import ClassStats
        from nclens.privacy.shift import feature_shift

        try:
            data = load_feature_file(features)
            if data.labels.ndim != 1:
                raise ValueError("feature shift needs single-label features (labels of shape (N,))")
            shift = feature_shift(data.features, data.labels, normalise=normalise)
            metrics = compute_metrics(ClassStats().update(data.features, data.labels))
        except (FileNotFoundError, ValueError, TypeError, MemoryError) as exc:
            _fail(str(exc))
        record = {**shift.to_dict(), **metrics}
        if json_out is not None:
            write_json(json_out, record)
        if not quiet:
            typer.echo(
                f"feature shift {shift.rms:.4g} (means {shift.means:.4g}, within {shift.within:.4g}, "
                f"max {shift.max:.4g}); nc1 {metrics.get('nc1', float('nan')):.4g}"
            )
