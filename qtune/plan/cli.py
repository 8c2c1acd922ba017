"""The ``qtune plan`` command and the one-line check ``qtune train`` runs before loading the model."""

from __future__ import annotations

from qtune.errors import QtuneError

GiB = 2**30


def _budget(args) -> int | None:
    from qtune.plan.budget import parse_size

    return parse_size(args.memory) if getattr(args, "memory", None) else None


def plan_device(recipe, budget: int | None, measure: bool) -> tuple[str, bool]:
    """(device to plan for, whether it is here): a recipe for CUDA can be planned on a CPU machine with a budget."""
    import torch

    from qtune.device import resolve_device

    if recipe.train.device == "cuda" and not torch.cuda.is_available() and not measure:
        if budget is None:
            raise QtuneError("--memory: train.device is cuda and no CUDA GPU is here to read its memory; give the "
                             "GPU's memory, e.g. --memory 24GiB")
        return "cuda", False
    return resolve_device(recipe.train.device, "train.device"), True


def run_plan(recipe, args) -> int | dict:
    """The plan printed for a reader, or with ``--json`` the object :func:`qtune.json_stdout.run_json` prints."""
    from qtune.plan.report import make_plan, render

    budget = _budget(args)
    device, here = plan_device(recipe, budget, args.measure)
    plan = make_plan(recipe, device, budget, timed=here and not args.no_time)
    measured = None
    if args.measure:
        from qtune.plan.measure import measure

        measured = measure(recipe, device, plan.shape, args.measure_allocator)
    if args.json:
        return {**plan.as_dict(), **({"measured": measured} if measured else {})}
    print(render(plan))
    if measured:
        print(side_by_side(recipe, plan, measured))
    return 0


def side_by_side(recipe, plan, m: dict) -> str:
    ratio = m["ratio"]
    lines = [f"measured: 2 training steps at micro batch {m['batch']} × seq {m['seq']} (the longest rows), {m['kernels']} kernels"]
    lines.append(f"  {'':28s}{'plan':>12s}{'measured':>12s}")
    lines.append(f"  {'training peak':28s}{m['planned_peak_bytes'] / GiB:>10.3f}Gi{m['peak_bytes'] / GiB:>10.3f}Gi"
                 f"   plan/measured {ratio:.3f} ({ratio - 1:+.1%}); measured = {measured_kind(m)}")
    if m.get("baseline_rss_bytes") is not None:
        lines.append(f"  subtracted from peak RSS: {m['baseline_rss_bytes'] / GiB:.3f} GiB before loading, "
                     f"{m['file_pages_bytes'] / GiB:.3f} GiB of file pages mapped since (checkpoint, library "
                     "code; parameters in the file counted back)")
    if m.get("loaded_bytes") is not None:
        lines.append(f"  {'model resident after load':28s}{m['planned_loaded_bytes'] / GiB:>10.3f}Gi{m['loaded_bytes'] / GiB:>10.3f}Gi")
    if plan.speed is not None and m.get("step_s"):
        from qtune.plan.throughput import micro_step_seconds

        est = sum(micro_step_seconds(recipe, plan.shape, m["batch"], m["seq"], plan.speed).values())
        lines.append(f"  {'step time (step 2)':28s}{est:>11.2f}s{m['step_s']:>11.2f}s   plan/measured {est / m['step_s']:.2f}")
    return "\n".join(lines)


def measured_kind(m: dict) -> str:
    """The measured peak's kind (:mod:`qtune.memory`, the kind train's summary.json reports) and how it was taken."""
    from qtune.memory import KINDS

    return (f"{m['peak_kind']}: {KINDS[m['peak_kind']]}" + (f", {m['allocator']}" if m.get("allocator") else "")
            + (" (peak not resettable: includes loading)" if m.get("peak_includes_loading") else ""))


def check_before_train(recipe, memory: str | None, console) -> None:
    """Print the plan's verdict on ``console`` (rich); refuse (exit 2) a recipe whose planned peak does not fit."""
    from qtune.device import resolve_device
    from qtune.plan.budget import parse_size
    from qtune.plan.report import make_plan

    plan = make_plan(recipe, resolve_device(recipe.train.device, "train.device"), parse_size(memory) if memory else None, timed=False)
    console.print(plan.verdict(), soft_wrap=True, markup=False, highlight=False)
    if not plan.fits:
        raise QtuneError(
            f"train.micro_batch_size: the plan's peak ~{(max(plan.peak, plan.eval_peak) + plan.overhead) / GiB:.2f} GiB does not fit "
            f"{plan.budget / GiB:.2f} GiB ({plan.budget_what}); set train.micro_batch_size={max(plan.max_micro_batch, 1)} or lower "
            f"data.max_length, or pass --no-plan-check to train anyway (qtune plan shows the breakdown)"
        )
