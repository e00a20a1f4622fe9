"""The plan's work, apart from its command line (`jaxrl_vlm.plan`): compile a job's programs for a target and report.

Kept free of absl flags so that tests and other tools import it beside the entry points (which define --config).
"""
from __future__ import annotations

import re
import sys
import time

EXIT_DOES_NOT_FIT = 1
EXIT_BAD_INPUT = 2


# The stand-in's chat template for image tasks: ChatML (the embedded default's) writing <|image|> for an image part,
# as Llama-3.2-Vision's template does; only the prompts' token widths matter to a plan.
MULTIMODAL_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<|image|>' }}"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def plan_tokenizer(model_path: str, override: str = "") -> tuple[object, str]:
    """(tokenizer, note): the override's, else the model's own, else a stand-in: the embedded default model's, with
    an <|image|> token and an image-aware ChatML template for a vision model's image tasks (its prompt widths stand
    in for the model's; the note says so)."""
    from jaxrl_vlm.models.api import default_model_path
    from jaxrl_vlm.models.tokenizer import load_tokenizer

    if override:
        return load_tokenizer(override), f"task prompts tokenized with {override}"
    try:
        return load_tokenizer(model_path), ""
    except FileNotFoundError:
        stand_in = load_tokenizer(default_model_path())
        stand_in.add_special_tokens({"additional_special_tokens": ["<|image|>"]})
        stand_in.chat_template = MULTIMODAL_CHATML
        return stand_in, (f"{model_path} has no tokenizer: task prompt widths from the embedded default's tokenizer "
                          "(give --tokenizer for exact widths)")


_SIZE = re.compile(r"required for [^(]*\(([\d.]+)([KMGT]?)\)")
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def out_of_memory_report(program, target, error: Exception):
    """The report of a program the target's compiler refused for lack of HBM (XLA:TPU's RESOURCE_EXHAUSTED): does
    not fit; temporaries (and total) as the compiler's message states them; the message as a note."""
    from jaxrl_vlm.planning import analysis

    message = str(error).splitlines()[0]
    found = _SIZE.search(message)
    need = int(float(found.group(1)) * _UNITS[found.group(2)]) if found else 0
    return analysis.ProgramReport(
        program=program.name, target=target.name, chips=target.chips, hbm_bytes=target.hbm_bytes, arguments=0,
        outputs=0, temporaries=need, total=need, flops=0.0, total_flops=0.0, bytes_accessed=0.0, collectives={},
        collective_time_s=0.0, step_time_lower_bound_s=0.0, mfu_at_bound=0.0, fits=False, loops=[],
        notes=[f"the compiler refused it: {message}"])


def with_steps(report, program, target) -> None:
    """A decoding program's bound from its decode steps: XLA counts a loop of unknown trip count (the sampler's,
    which stops at EOS) once, so the bound is at least program.decode_steps x program.decode_rounds steps of
    `analysis.decode_step_seconds` each (every row generating its budget); the MFU follows, and a note."""
    from jaxrl_vlm.planning import analysis

    step = analysis.decode_step_seconds(report, program.weight_bytes_per_chip, program.decode_steps, target)
    report.notes.append(analysis.decode_step_note(report, program.weight_bytes_per_chip, program.decode_steps, target)
                        + f"; {program.decode_steps} x {program.decode_rounds} steps an execution")
    report.step_time_lower_bound_s = max(report.step_time_lower_bound_s,
                                         step * program.decode_steps * program.decode_rounds)
    report.mfu_at_bound = program.model_flops / (target.chips * target.peak_flops * report.step_time_lower_bound_s)


def exit_status(reports: list) -> int:
    """The plan's exit status for its reports: 0 when every program fits, EXIT_DOES_NOT_FIT otherwise."""
    return 0 if all(r.fits for r in reports) else EXIT_DOES_NOT_FIT


def run_plan(config, target, tokenizer_path: str = "", out=sys.stdout, only: tuple[str, ...] = (),
             compiled_programs: dict | None = None) -> list:
    """Plan config's job on `target` (a name, or a `targets.Target`); returns the `analysis.ProgramReport`s (printed
    to `out` as a table) of its programs (those named in `only`, when given); compiled_programs (a dict) receives
    {name: jax.stages.Compiled}. ValueError / FileNotFoundError / RuntimeError on bad input, before compiling."""
    from jaxrl_vlm import config as config_lib
    from jaxrl_vlm.planning import analysis, programs, targets
    from jaxrl_vlm.training.sft import build_mesh

    target = targets.parse_target(target) if isinstance(target, str) else target
    config_lib.validate(config, device_count=target.chips)
    mesh = build_mesh(config.mesh, targets.target_devices(target))
    tokenizer, note = plan_tokenizer(config_lib.resolve_model_path(config.model.path), tokenizer_path)
    job = programs.job_programs(config, mesh, tokenizer)
    unknown = sorted(set(only) - {p.name for p in job})
    if unknown:
        raise ValueError(f"--programs {unknown}: job {config.job!r} compiles {[p.name for p in job]}")
    job = [p for p in job if not only or p.name in only]
    print(f"plan: job {config.job!r}, model {config.model.path}, target {target.name} ({target.chips} x {target.chip}, "
          f"{target.hosts} hosts), mesh {dict(mesh.shape)}" + (f"\nnote: {note}" if note else ""), file=out)
    reports = []
    for program in job:
        print(f"compiling {program.name} ({program.note}) ...", file=out, flush=True)
        clock = time.perf_counter()
        try:
            compiled = program.lower().compile()
        except Exception as err:  # noqa: BLE001 - XLA raises its runtime error type; only out-of-memory is a verdict
            if "RESOURCE_EXHAUSTED" not in str(err):
                raise
            reports.append(out_of_memory_report(program, target, err))
            print(f"  out of memory: {reports[-1].notes[0]}", file=out, flush=True)
            continue
        print(f"  compiled in {time.perf_counter() - clock:.0f} s", file=out, flush=True)
        if compiled_programs is not None:
            compiled_programs[program.name] = compiled
        report = analysis.analyze(compiled, program.name, target, model_flops=program.model_flops)
        if program.decode_steps:
            with_steps(report, program, target)
        reports.append(report)
    print(analysis.format_table(reports), file=out)
    for report in reports:
        for line in report.notes:
            print(f"  {report.program}: {line}", file=out)
        if not report.fits:
            print(f"DOES NOT FIT: {report.program}: {analysis.fit_advice(report)}", file=out)
    return reports
