"""What one compiled program costs on a Target: per-chip memory, FLOPs, HBM traffic and collective traffic, a
step-time lower bound, and whether it fits.

Memory comes from `compiled.memory_analysis()`; FLOPs and bytes accessed from `compiled.cost_analysis()` (on the
deviceless CUDA path, where that is None, from XLA's generic HLO cost analysis of the compiled module; where XLA
cannot count, e.g. -1 FLOPs for cuBLAS calls, from our own dot/convolution count); the collectives and while loops
from the optimized HLO text (`compiled.as_text()`). All figures are per chip, for one execution of the program:
XLA compiles one SPMD partition, which every chip runs.

Collective cost model (bytes a chip sends, ring algorithms, n = chips in the collective's group, S = the bytes of
the collective's operands on one chip):
    all-gather S (n-1)    reduce-scatter S (n-1)/n    all-reduce 2 S (n-1)/n    all-to-all S (n-1)/n
    collective-permute S
A collective whose group spans hosts moves at the target's dcn_bandwidth, otherwise at its interconnect_bandwidth;
collectives are summed, as if none overlapped each other (compute overlap is what the max in the bound allows).

While loops: XLA's cost analysis counts a loop body once. Trip counts come from the loop's `known_trip_count`
(XLA:CPU and XLA:GPU write it) or from the loop's shape (`i < N` with a constant start and step; XLA:TPU writes no
trip count); the other iterations' dot/convolution FLOPs, estimated HBM bytes and collectives are added. A loop
whose trip count is neither is counted once, with a note.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from typing import Any

import jax
import numpy as np

from jaxrl_vlm.planning.targets import Target, chips_per_host

COLLECTIVE_KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_KIND = {op: kind for kind in COLLECTIVE_KINDS for op in (kind, kind + "-start")} | {"ragged-all-to-all": "all-to-all"}
GIB = 2**30


@dataclasses.dataclass
class ProgramReport:
    """One program on one target. Bytes per chip: arguments, outputs, temporaries, total (= arguments + outputs +
    temporaries + generated code - donated bytes, the HBM the program needs). flops: XLA's count for one chip's
    partition, one execution (loops included); total_flops = flops x chips. bytes_accessed: per chip HBM traffic.
    collectives: bytes a chip sends per execution, by kind. loops: per while loop {name, op_name, trip_count (None
    if unknown), collectives: bytes per iteration by kind, collective_time_s per iteration}, outermost first.
    Times in seconds."""

    program: str
    target: str
    chips: int
    hbm_bytes: int
    arguments: int
    outputs: int
    temporaries: int
    total: int
    flops: float
    total_flops: float
    bytes_accessed: float
    collectives: dict[str, float]
    collective_time_s: float
    step_time_lower_bound_s: float
    mfu_at_bound: float
    fits: bool
    loops: list[dict[str, Any]]
    notes: list[str]

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the report (bytes per chip under "per_chip_bytes")."""
        return {
            "program": self.program, "target": self.target, "chips": self.chips, "hbm_bytes": self.hbm_bytes,
            "per_chip_bytes": {"arguments": self.arguments, "outputs": self.outputs,
                               "temporaries": self.temporaries, "total": self.total},
            "flops": self.flops, "total_flops": self.total_flops, "bytes_accessed": self.bytes_accessed,
            "step_time_lower_bound_s": self.step_time_lower_bound_s, "fits": self.fits,
            "collectives": dict(self.collectives), "collective_time_s": self.collective_time_s,
            "mfu_at_bound": self.mfu_at_bound, "loops": self.loops, "notes": list(self.notes),
        }


def analyze(compiled: jax.stages.Compiled, program: str, target: Target, *,
            model_flops: float | None = None) -> ProgramReport:
    """The report of `compiled` (compiled for `target`'s devices) under the name `program`. model_flops: the
    program's useful FLOPs over all chips (e.g. 6 N D for a training step), the numerator of mfu_at_bound;
    without it XLA's total_flops."""
    notes: list[str] = []
    arguments, outputs, temporaries, total = _memory(compiled.memory_analysis(), notes)
    module = _Module(compiled.as_text(), chips_per_host(target), target.interconnect_bandwidth, target.dcn_bandwidth)
    looped, once, loops = module.cost(module.entry, True), module.cost(module.entry, False), module.loops()
    notes += list(dict.fromkeys(module.notes))
    flops, bytes_accessed = _flops_and_bytes(compiled, looped, once, notes)
    if target.platform == "cuda":
        notes.append("deviceless GPU compilation does no GEMM autotuning: temporaries are XLA's estimate")
        if total > 0.75 * target.hbm_bytes:
            notes.append("needs over 75% of GPU memory, JAX's default pool: run with "
                         "XLA_PYTHON_CLIENT_MEM_FRACTION=.95")
    bound = max(flops / target.peak_flops, bytes_accessed / target.hbm_bandwidth, looped.collective_time)
    useful = model_flops if model_flops is not None else flops * target.chips
    return ProgramReport(
        program=program, target=target.name, chips=target.chips, hbm_bytes=target.hbm_bytes,
        arguments=arguments, outputs=outputs, temporaries=temporaries, total=total,
        flops=flops, total_flops=flops * target.chips, bytes_accessed=bytes_accessed,
        collectives={kind: looped.collectives.get(kind, 0.0) for kind in COLLECTIVE_KINDS},
        collective_time_s=looped.collective_time, step_time_lower_bound_s=bound,
        mfu_at_bound=useful / (target.chips * target.peak_flops * bound) if bound > 0 else 0.0,
        fits=total <= target.hbm_bytes, loops=loops, notes=notes)


def _flops_and_bytes(compiled: jax.stages.Compiled, looped: _Cost, once: _Cost,
                     notes: list[str]) -> tuple[float, float]:
    """Per-chip FLOPs and HBM bytes of one execution: XLA's, plus the loop iterations its cost analysis leaves
    out (looped - once: our counts with and without trip counts); our own count where XLA gives none."""
    xla = _xla_cost(compiled, notes)
    own = [key for key in ("flops", "bytes accessed") if xla.get(key, -1.0) < 0]
    flops = looped.flops if "flops" in own else xla["flops"] + looped.flops - once.flops
    bytes_accessed = looped.bytes if "bytes accessed" in own else xla["bytes accessed"] + looped.bytes - once.bytes
    if own:
        notes.append(f"{' and '.join(own)}: our own count from the HLO (dot/convolution FLOPs; bytes estimated from "
                     "operand and result sizes): XLA's cost analysis gave none, or -1 for ops it cannot cost "
                     "(cuBLAS custom calls)")
    if len(own) < 2 and (looped.flops, looped.bytes) != (once.flops, once.bytes):
        notes.append(f"XLA's cost analysis counts each while-loop body once: added the other iterations' "
                     f"{looped.flops - once.flops:.3g} dot/convolution FLOPs and "
                     f"{looped.bytes - once.bytes:.3g} estimated HBM bytes")
    return flops, bytes_accessed


def _memory(stats: Any, notes: list[str]) -> tuple[int, int, int, int]:
    """(arguments, outputs, temporaries, total) bytes per chip from a CompiledMemoryStats."""
    if stats is None:
        notes.append("no memory analysis from XLA: memory figures are 0")
        return 0, 0, 0, 0
    arguments, outputs = stats.argument_size_in_bytes, stats.output_size_in_bytes
    code, alias = stats.generated_code_size_in_bytes, stats.alias_size_in_bytes
    temporaries = stats.temp_size_in_bytes
    peak = getattr(stats, "peak_memory_in_bytes", 0)
    # XLA:TPU leaves loop-carried and collective buffers out of temp_size but not out of its peak.
    if peak > arguments + outputs + temporaries + code - alias:
        notes.append(f"temporaries raised from XLA's temp_size {temporaries / GIB:.3f} GiB to match its peak "
                     f"memory {peak / GIB:.3f} GiB")
        temporaries = peak - (arguments + outputs + code - alias)
    return arguments, outputs, temporaries, arguments + outputs + temporaries + code - alias


def _xla_cost(compiled: jax.stages.Compiled, notes: list[str]) -> dict[str, float]:
    """XLA's {"flops", "bytes accessed"} of the compiled module (loop bodies counted once); {} if none."""
    try:
        cost = compiled.cost_analysis()
    except NotImplementedError:
        cost = None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost:
        try:
            from jax._src.lib import _jax

            module = compiled.runtime_executable().hlo_modules()[0]
            cost = _jax.hlo_module_cost_analysis(jax.devices("cpu")[0].client, module)
        except Exception:  # the fallback after it is our own count
            return {}
        notes.append("flops and bytes_accessed from XLA's generic HLO cost analysis of the compiled module: the "
                     "target compiler gave none (deviceless GPU compilation)")
    return {key: float(cost[key]) for key in ("flops", "bytes accessed") if key in cost}


# ---------------------------------------------------------------------------------------------------------------
# Optimized HLO text


@dataclasses.dataclass
class _Instr:
    name: str
    shape: str
    opcode: str
    operands: list[str]
    args: str  # the text inside the operand parentheses (constants keep their literal here)
    attrs: str


@dataclasses.dataclass
class _Cost:
    flops: float = 0.0
    bytes: float = 0.0
    collective_time: float = 0.0
    collectives: Counter = dataclasses.field(default_factory=Counter)

    def add(self, other: _Cost, factor: float = 1.0) -> None:
        self.flops += factor * other.flops
        self.bytes += factor * other.bytes
        self.collective_time += factor * other.collective_time
        for kind, value in other.collectives.items():
            self.collectives[kind] += factor * value


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
                "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "s4": 0.5, "u4": 0.5, "s2": 0.25, "u2": 0.25}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,<=]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s+->\s+.*\{\s*$")
# Opcodes that move no HBM data themselves (views, control flow whose bodies are counted, bookkeeping).
_NO_TRAFFIC = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "call", "conditional",
               "after-all", "partition-id", "replica-id", "opt-barrier", "add-dependency", "async-done",
               "async-update", "copy-done", "all-gather-done", "all-reduce-done", "reduce-scatter-done",
               "collective-permute-done", "send-done", "recv-done"}


def _arrays(shape: str) -> list[tuple[str, list[int]]]:
    """(dtype, dims) of every array in an HLO shape (tuples flattened; dynamic bounds taken at their bound)."""
    return [(dtype, [int(d.replace("<=", "")) for d in dims.split(",") if d])
            for dtype, dims in _ARRAY.findall(shape)]


def _bytes(shape: str) -> float:
    """Bytes of an HLO shape (all arrays of a tuple); token and unknown types count 0."""
    total = 0.0
    for dtype, dims in _arrays(shape):
        size = _DTYPE_BYTES.get(dtype, 1 if dtype.startswith("f8") else 0.5 if dtype.startswith("f4") else 0)
        total += size * math.prod(dims)
    return total


def _balanced(text: str, start: int) -> int:
    """Index just past the bracket group opening at text[start]."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    stack = []
    for i in range(start, len(text)):
        if text[i] in pairs:
            stack.append(pairs[text[i]])
        elif stack and text[i] == stack[-1]:
            stack.pop()
            if not stack:
                return i + 1
    return len(text)


def _parse_instruction(line: str) -> tuple[_Instr, bool] | None:
    m = re.match(r"\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*", line)
    if not m:
        return None
    rest = line[m.end():]
    end = _balanced(rest, 0) if rest.startswith("(") else rest.find(" ")
    shape, rest = rest[:end], rest[end:]
    op = re.match(r"\s*([\w\-]+)\(", rest)
    if not op:
        return None
    close = _balanced(rest, op.end() - 1)
    args = rest[op.end():close - 1]
    operands = re.findall(r"%([\w.\-]+)", args)
    return _Instr(m.group(2), shape, op.group(1), operands, args, rest[close:]), bool(m.group(1))


class _Module:
    """The computations of an optimized HLO module, with loop-aware cost accumulation."""

    def __init__(self, text: str, chips_per_host: int, interconnect_bandwidth: float, dcn_bandwidth: float):
        self.comps: dict[str, list[_Instr]] = {}
        self.roots: dict[str, str] = {}
        self.instrs: dict[str, _Instr] = {}
        self.entry = ""
        self.notes: list[str] = []
        self._chips_per_host = chips_per_host
        self._bandwidths = (interconnect_bandwidth, dcn_bandwidth)
        self._cost_memo: dict[tuple[str, bool], _Cost] = {}
        self._trip_memo: dict[str, int | None] = {}
        partitions = re.search(r"num_partitions=(\d+)", text)
        self._partitions = int(partitions.group(1)) if partitions else 1
        current = None
        for line in text.splitlines():
            line = re.sub(r"/\*.*?\*/", "", line)
            header = _HEADER.match(line)
            if header:
                current = header.group(2)
                self.comps[current] = []
                if header.group(1):
                    self.entry = current
            elif current is not None and line.strip() == "}":
                current = None
            elif current is not None:
                parsed = _parse_instruction(line)
                if parsed:
                    instr, is_root = parsed
                    self.comps[current].append(instr)
                    self.instrs[instr.name] = instr
                    if is_root:
                        self.roots[current] = instr.name

    # -- call graph ------------------------------------------------------------------------------------------

    @staticmethod
    def _callees(instr: _Instr) -> list[tuple[str, str]]:
        """(computation, role) pairs an instruction runs: role 'fused' (fusion / async wrapper: same scope),
        'body' / 'condition' (while), 'branch' (conditional), 'call'. Reducers (to_apply) are per element and
        async-update/-done repeat their start's computation, so neither is listed."""
        if instr.opcode == "while":
            return [(re.search(r"body=%?([\w.\-]+)", instr.attrs).group(1), "body"),
                    (re.search(r"condition=%?([\w.\-]+)", instr.attrs).group(1), "condition")]
        if instr.opcode == "conditional":
            names = re.findall(r"(?:true|false)_computation=%?([\w.\-]+)", instr.attrs)
            branches = re.search(r"branch_computations=\{([^}]*)\}", instr.attrs)
            names += re.findall(r"%?([\w.\-]+)", branches.group(1)) if branches else []
            return [(name, "branch") for name in names]
        if instr.opcode in ("async-update", "async-done"):
            return []
        called = re.search(r"\bcalls=%?([\w.\-]+)", instr.attrs)
        if not called:
            return []
        return [(called.group(1), "call" if instr.opcode == "call" else "fused")]

    def _scope(self, comp: str) -> list[str]:
        """`comp` and the computations fused into it (transitively): what runs as one step of its caller."""
        out, todo = [], [comp]
        while todo:
            name = todo.pop()
            out.append(name)
            todo += [c for instr in self.comps.get(name, []) for c, role in self._callees(instr) if role == "fused"]
        return out

    # -- costs ------------------------------------------------------------------------------------------------

    def cost(self, comp: str, use_trips: bool) -> _Cost:
        """Dot/convolution FLOPs, estimated HBM bytes and collectives of one execution of `comp`, nested loops
        repeated by their trip counts (use_trips) or once (as XLA's cost analysis counts them)."""
        key = (comp, use_trips)
        if key in self._cost_memo:
            return self._cost_memo[key]
        total = _Cost()
        seen_channels: set[str] = set()
        for name in self._scope(comp):
            fused = name != comp
            for instr in self.comps.get(name, []):
                total.flops += self._flops(instr)
                if not fused:
                    total.bytes += self._traffic(instr)
                self._add_collective(instr, name, total, seen_channels)
                for callee, role in self._callees(instr):
                    if role == "fused":
                        continue
                    trips = self.trip_count(instr) if role in ("body", "condition") and use_trips else None
                    total.add(self.cost(callee, use_trips), trips if trips is not None else 1)
        self._cost_memo[key] = total
        return total

    def _flops(self, instr: _Instr) -> float:
        if not instr.operands or any(o not in self.instrs for o in instr.operands[:2]):
            return 0.0
        if instr.opcode == "dot" or (instr.opcode == "custom-call" and "dot_dimension_numbers" in instr.attrs):
            # dot: attrs lhs_contracting_dims={1}; a cuBLAS custom call: "lhs_contracting_dimensions":["1"]
            dims = re.search(r'lhs_contracting_dim\w*[=":]+[\[{]([^\]}]*)[\]}]', instr.attrs)
            lhs = _arrays(self.instrs[instr.operands[0]].shape)[0][1]
            contracted = math.prod(lhs[int(d.strip('" '))] for d in dims.group(1).split(",") if d.strip('" '))
            return 2.0 * math.prod(_arrays(instr.shape)[0][1]) * contracted
        if instr.opcode == "convolution":
            return _convolution_flops(instr, _arrays(self.instrs[instr.operands[0]].shape)[0][1],
                                      _arrays(self.instrs[instr.operands[1]].shape)[0][1])
        return 0.0

    def _traffic(self, instr: _Instr) -> float:
        """Estimated HBM bytes an unfused instruction reads and writes: operands + result, except that a
        dynamic slice reads only its slice and a dynamic-update-slice writes only its update (in place)."""
        if instr.opcode in _NO_TRAFFIC or (instr.opcode == "custom-call" and not instr.operands):
            return 0.0
        if instr.opcode == "dynamic-slice":
            return 2 * _bytes(instr.shape)
        if instr.opcode == "dynamic-update-slice":
            return 2 * _bytes(self.instrs[instr.operands[1]].shape)
        read = [_bytes(self.instrs[o].shape) if o in self.instrs else 0.0 for o in instr.operands]
        written = _bytes(instr.shape)
        called = re.search(r"\bcalls=%?([\w.\-]+)", instr.attrs)
        if instr.opcode == "fusion" and called:
            read, written = self._fused_traffic(called.group(1), read, written)
        return sum(read) + written

    def _fused_traffic(self, comp: str, read: list[float], written: float) -> tuple[list[float], float]:
        """Operand reads of a fusion narrowed to what its dynamic slices take, and an in-place
        dynamic-update-slice root counted as its update."""
        instrs = self.comps.get(comp, [])
        params = {}
        for instr in instrs:
            if instr.opcode == "parameter":
                params[instr.name] = int(instr.args)
        users: dict[str, list[_Instr]] = {}
        for instr in instrs:
            for o in instr.operands:
                users.setdefault(o, []).append(instr)
        read = list(read)
        for name, index in params.items():
            uses = users.get(name, [])
            if uses and index < len(read) and all(u.opcode in ("dynamic-slice", "slice") and u.operands[0] == name
                                                  for u in uses):
                read[index] = sum(_bytes(u.shape) for u in uses)
        root = self.instrs.get(self.roots.get(comp, ""))
        if root is not None and root.opcode == "dynamic-update-slice" and root.operands[0] in params:
            index = params[root.operands[0]]
            if index < len(read):
                read[index] = 0.0
            written = _bytes(self.instrs[root.operands[1]].shape)
        return read, written

    def _add_collective(self, instr: _Instr, comp: str, total: _Cost, seen_channels: set[str]) -> None:
        kind = _KIND.get(instr.opcode)
        if kind is None:
            return
        channel = re.search(r"channel_id=(\d+)", instr.attrs)
        if channel:
            # XLA:TPU repeats one collective (same channel) in its async start / compute / done fusions.
            if channel.group(1) in seen_channels:
                return
            seen_channels.add(channel.group(1))
        operand = sum(_bytes(self.instrs[o].shape) for o in instr.operands if o in self.instrs)
        if kind == "collective-permute":
            pairs = re.search(r"source_target_pairs=\{((?:\{\d+,\d+\},?)*)\}", instr.attrs)
            groups = [[int(a), int(b)] for a, b in re.findall(r"\{(\d+),(\d+)\}", pairs.group(1))] if pairs else []
            sent = operand if groups else 0.0
        else:
            groups = _replica_groups(instr.attrs, self._partitions)
            if groups is None:
                self.notes.append(f"{instr.name}: replica groups not understood; taken as all {self._partitions} "
                                  "partitions")
                groups = [list(range(self._partitions))]
            n = len(groups[0])
            if kind == "all-reduce" and self._scatters(instr, comp, n):
                kind = "reduce-scatter"  # XLA:TPU's all-reduce-scatter fusion: an all-reduce sliced per chip
            sent = {"all-gather": operand * (n - 1), "all-reduce": 2 * operand * (n - 1) / n}.get(
                kind, operand * (n - 1) / n)
        crosses = any(len({d // self._chips_per_host for d in g}) > 1 for g in groups)
        total.collectives[kind] += sent
        total.collective_time += sent / self._bandwidths[1 if crosses else 0]

    def _scatters(self, instr: _Instr, comp: str, n: int) -> bool:
        users = [u for u in self.comps[comp] if instr.name in u.operands]
        return bool(users) and all(u.opcode == "dynamic-slice" and _bytes(u.shape) * n == _bytes(instr.shape)
                                   for u in users)

    # -- while loops ------------------------------------------------------------------------------------------

    def trip_count(self, loop: _Instr) -> int | None:
        """Iterations of a while instruction: XLA's known_trip_count, else inferred from `i < N` with a constant
        start and step, else None (with a note)."""
        if loop.name in self._trip_memo:
            return self._trip_memo[loop.name]
        known = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', loop.attrs)
        trips = int(known.group(1)) if known else self._inferred_trips(loop)
        if trips is None:
            self.notes.append(f"while loop {loop.name} ({_op_name(loop)}): trip count unknown, counted once "
                              "(its figures are per iteration of that loop)")
        self._trip_memo[loop.name] = trips
        return trips

    def _inferred_trips(self, loop: _Instr) -> int | None:
        body, cond = [c for c, _ in self._callees(loop)]
        compare = self._value(cond, self.roots.get(cond, ""), {})
        if not compare or compare[0] != "cmp":
            return None
        _, direction, lhs, rhs = compare
        if lhs and lhs[0] == "const" and rhs and rhs[0] == "gte":
            lhs, rhs = rhs, lhs
            direction = {"GT": "LT", "GE": "LE", "LT": "GT", "LE": "GE"}.get(direction, direction)
        if not (lhs and lhs[0] == "gte" and rhs and rhs[0] == "const"):
            return None
        index, bound = lhs[1], rhs[1]
        init = self.instrs.get(loop.operands[0]) if loop.operands else None
        if init is None or init.opcode != "tuple" or index >= len(init.operands):
            return None
        start = self._value(self._comp_of(init.name), init.operands[index], {})
        root = self.instrs.get(self.roots.get(body, ""))
        if root is None or root.opcode != "tuple" or not start or start[0] != "const":
            return None
        step = self._value(body, root.operands[index], {})
        if not step or step[0] != "add" or step[1] != index or step[2] == 0:
            return None
        start, step = start[1], step[2]
        span = {"LT": bound - start, "LE": bound - start + step, "GT": start - bound, "GE": start - bound - step,
                "NE": bound - start}.get(direction)
        if span is None or (direction in ("GT", "GE")) != (step < 0):
            return None
        return max(0, math.ceil(span / step))

    def _comp_of(self, instr_name: str) -> str:
        return next(c for c, instrs in self.comps.items() if any(i.name == instr_name for i in instrs))

    def _value(self, comp: str, name: str, env: dict[int, tuple[str, str]]) -> tuple | None:
        """What a scalar instruction computes, as far as loop bounds need: ('const', v), ('gte', k) (element k of
        the loop state), ('add', k, step), ('cmp', direction, lhs, rhs); None otherwise. env maps a fused
        computation's parameter numbers to (computation, operand) of the fusion."""
        instr = self.instrs.get(name)
        if instr is None:
            return None
        op = instr.opcode
        if op == "constant":
            literal = instr.args.strip()
            return ("const", int(literal)) if re.fullmatch(r"-?\d+", literal) else None
        if op == "parameter" and int(instr.args) in env:
            return self._value(*env[int(instr.args)], {})
        if op == "get-tuple-element":
            source = self.instrs.get(instr.operands[0])
            if source is not None and source.opcode == "parameter" and not env:
                return ("gte", int(re.search(r"index=(\d+)", instr.attrs).group(1)))
            return None
        if op in ("copy", "bitcast", "convert", "reshape"):
            return self._value(comp, instr.operands[0], env)
        if op == "fusion":
            called = re.search(r"\bcalls=%?([\w.\-]+)", instr.attrs).group(1)
            inner = {i: (comp, o) for i, o in enumerate(instr.operands)}
            return self._value(called, self.roots.get(called, ""), inner)
        if op == "add":
            a, b = (self._value(comp, o, env) for o in instr.operands)
            if a and b and a[0] == "const":
                a, b = b, a
            if a and b and a[0] == "gte" and b[0] == "const":
                return ("add", a[1], b[1])
            return None
        if op == "compare":
            direction = re.search(r"direction=(\w+)", instr.attrs).group(1)
            return ("cmp", direction, *(self._value(comp, o, env) for o in instr.operands))
        return None

    def loops(self) -> list[dict[str, Any]]:
        """Every while loop reachable from the entry, outermost first: name, op_name, trip_count, collectives
        (bytes per iteration by kind, inner loops repeated) and their collective_time_s per iteration."""
        out, todo = [], [self.entry]
        while todo:
            comp = todo.pop(0)
            for name in self._scope(comp):
                for instr in self.comps.get(name, []):
                    callees = self._callees(instr)
                    if instr.opcode == "while":
                        body = callees[0][0]
                        per_iteration = self.cost(body, True)
                        out.append({"name": instr.name, "op_name": _op_name(instr),
                                    "trip_count": self.trip_count(instr),
                                    "collectives": {k: per_iteration.collectives.get(k, 0.0)
                                                    for k in COLLECTIVE_KINDS},
                                    "collective_time_s": per_iteration.collective_time})
                    todo += [c for c, role in callees if role in ("body", "branch", "call")]
        return out


def _convolution_flops(instr: _Instr, lhs: list[int], kernel: list[int]) -> float:
    """FLOPs of an HLO convolution: 2 x output batch x output features x kernel input features x, per spatial
    dimension, the (output position, window tap) pairs that land on a real input element. XLA:TPU writes batched
    per-head matmuls as convolutions over a padded or dilated window whose taps mostly hit padding, so counting
    every tap (output size x window) would count such a matmul many times over; XLA's own cost analysis also
    counts only the real taps."""
    lhs_labels, kernel_labels, out_labels = re.match(r"(\w+)_(\w+)->(\w+)",
                                                     re.search(r"dim_labels=(\S+)", instr.attrs).group(1)).groups()
    out = _arrays(instr.shape)[0][1]
    window = re.search(r"window=\{([^}]*)\}", instr.attrs)
    fields = dict(f.split("=", 1) for f in window.group(1).split()) if window else {}
    spatial = [label for label in lhs_labels if label.isdigit()]
    per_dim = lambda key, default: ([int(v) for v in fields[key].split("x")] if key in fields
                                    else [default] * len(spatial))
    strides, lhs_dilation, rhs_dilation = per_dim("stride", 1), per_dim("lhs_dilate", 1), per_dim("rhs_dilate", 1)
    pads_low = [int(p.split("_")[0]) for p in fields["pad"].split("x")] if "pad" in fields else [0] * len(spatial)
    taps = 1.0
    for d, label in enumerate(spatial):
        size, window_size = lhs[lhs_labels.index(label)], kernel[kernel_labels.index(label)]
        positions = np.arange(out[out_labels.index(label)]) * strides[d] - pads_low[d]
        dilated_end = (size - 1) * lhs_dilation[d]
        real = lambda at: np.count_nonzero((at >= 0) & (at <= dilated_end) & (at % lhs_dilation[d] == 0))
        taps *= sum(real(positions + k * rhs_dilation[d]) for k in range(window_size))
    return (2.0 * out[out_labels.index("b")] * out[out_labels.index("f")] * kernel[kernel_labels.index("i")]
            * taps)


def _op_name(instr: _Instr) -> str:
    m = re.search(r'op_name="([^"]*)"', instr.attrs)
    return m.group(1) if m else ""


def _replica_groups(attrs: str, partitions: int) -> list[list[int]] | None:
    """The device groups of a collective's `replica_groups` in any of XLA's printed forms: {} (all partitions),
    {{0,1},{2,3}}, the iota form [2,4]<=[4,2]T(1,0), and the mesh form mesh['x'=2,'y'=4], device_ids=(...) {'y'}
    (sub-axes as 'y':(1)2). None if absent or not understood."""
    m = re.search(r"replica_groups=", attrs)
    if not m:
        return None
    text = attrs[m.end():]
    if text.startswith("{}"):
        return [list(range(partitions))]
    if text.startswith("{"):
        body = text[:_balanced(text, 0)]
        return [[int(x) for x in g.split(",") if x.strip()] for g in re.findall(r"\{([\d,\s]*)\}", body[1:-1])]
    iota = re.match(r"\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", text)
    if iota:
        return _iota([int(iota.group(1)), int(iota.group(2))], iota.group(3), iota.group(4)).tolist()
    if text.startswith("mesh["):
        return _mesh_groups(text)
    return None


def _iota(shape: list[int], reshape: str, perm: str | None) -> np.ndarray:
    dims = [int(d) for d in reshape.split(",")]
    ids = np.arange(math.prod(dims)).reshape(dims)
    if perm:
        ids = ids.transpose([int(p) for p in perm.split(",")])
    return ids.reshape(shape)


def _mesh_groups(text: str) -> list[list[int]] | None:
    """Groups of the mesh form: the mesh's device ids (iota unless device_ids says otherwise) reshaped to the
    axes (split where sub-axes are grouped), the grouped axes moved last and flattened into groups."""
    axes_end = _balanced(text, 4)
    axes = [(name, int(size)) for name, size in re.findall(r"'([^']*)'=(\d+)", text[5:axes_end - 1])]
    if not axes:
        return None
    rest = text[axes_end:]
    sizes = [size for _, size in axes]
    ids = np.arange(math.prod(sizes))
    device_ids = re.match(r",\s*device_ids=\(", rest)
    if device_ids:
        end = _balanced(rest, device_ids.end() - 1)
        inner = rest[device_ids.end():end - 1]
        iota = re.fullmatch(r"\[([\d,]+)\](?:T\(([\d,]+)\))?", inner)
        if iota:
            ids = _iota([ids.size], iota.group(1), iota.group(2))
        elif re.fullmatch(r"[\d,\s]+", inner):
            ids = np.array([int(x) for x in inner.split(",")])
        else:
            return None
        rest = rest[end:]
    grouped = re.match(r"\s*\{([^}]*)\}", rest)
    if not grouped:
        return None
    refs = []  # (axis index, pre-size, size) of each grouped (sub-)axis, in the listed order
    names = [name for name, _ in axes]
    for axis, pre, size in re.findall(r"'([^']*)'(?::\((\d+)\)(\d+))?", grouped.group(1)):
        i = names.index(axis)
        refs.append((i, int(pre), int(size)) if pre else (i, 1, sizes[i]))
    if grouped.group(1).strip() and not refs:
        return None
    factors, grouped_dims = [], []
    for i, full in enumerate(sizes):
        covered = 1
        for ref in sorted((r for r in refs if r[0] == i), key=lambda r: r[1]):
            if ref[1] > covered:
                factors.append(ref[1] // covered)
                covered = ref[1]
            grouped_dims.append((refs.index(ref), len(factors)))
            factors.append(ref[2])
            covered *= ref[2]
        if covered < full:
            factors.append(full // covered)
    order = [d for _, d in sorted(grouped_dims)]
    ids = ids.reshape(factors).transpose([d for d in range(len(factors)) if d not in order] + order)
    group = math.prod(factors[d] for d in order)
    return ids.reshape(-1, group).tolist()


# ---------------------------------------------------------------------------------------------------------------
# Presentation


def format_table(reports: list[ProgramReport]) -> str:
    """A fixed-width table of reports (GiB per chip, TFLOPs per chip, ms) and a final verdict line."""
    header = (f"{'program':<24} {'target':<12} {'args':>8} {'outputs':>8} {'temps':>8} {'total':>8} {'HBM':>8} "
              f"{'fits':>4} {'TFLOPs':>9} {'coll GiB':>9} {'bound ms':>10} {'MFU':>6}")
    rows = [header, "-" * len(header)]
    for r in reports:
        rows.append(
            f"{r.program:<24.24} {r.target:<12.12} {r.arguments / GIB:>8.2f} {r.outputs / GIB:>8.2f} "
            f"{r.temporaries / GIB:>8.2f} {r.total / GIB:>8.2f} {r.hbm_bytes / GIB:>8.2f} "
            f"{'yes' if r.fits else 'NO':>4} {r.flops / 1e12:>9.3f} {sum(r.collectives.values()) / GIB:>9.2f} "
            f"{r.step_time_lower_bound_s * 1e3:>10.2f} {r.mfu_at_bound:>6.1%}")
    misfits = [r.program for r in reports if not r.fits]
    if misfits:
        rows.append(f"DOES NOT FIT: {', '.join(misfits)} ({len(misfits)} of {len(reports)} programs exceed HBM)")
    else:
        rows.append(f"fits: all {len(reports)} programs within HBM (GiB per chip; TFLOPs per chip per execution)")
    return "\n".join(rows)


DECODE_LOOP = "decode)/while"  # op_name of the sampler's token loop (`sampler.decode` under jit)


def decode_loop(report: ProgramReport, decode_steps: int) -> dict[str, Any] | None:
    """The loop of a decoding program that generates one token per iteration: the sampler's token loop (op_name
    containing DECODE_LOOP; of several, the one with the most collectives), else the outermost loop of decode_steps
    iterations, else the one with the most iterations; None without loops."""
    named = [loop for loop in report.loops if DECODE_LOOP in loop["op_name"]]
    if named:
        return max(named, key=lambda loop: loop["collective_time_s"])
    loops = [loop for loop in report.loops if loop["trip_count"] == decode_steps] or sorted(
        report.loops, key=lambda loop: -(loop["trip_count"] or 0))
    return loops[0] if loops else None


def decode_step_seconds(report: ProgramReport, weight_bytes_per_chip: float, decode_steps: int,
                        target: Target) -> float:
    """Lower bound of one decode step: reading the chip's share of the weights (bytes) from HBM, or the collectives
    of one iteration of the decode loop (`decode_loop`), whichever is longer."""
    loop = decode_loop(report, decode_steps)
    return max(weight_bytes_per_chip / target.hbm_bandwidth, loop["collective_time_s"] if loop else 0.0)


def decode_step_note(report: ProgramReport, weight_bytes_per_chip: float, decode_steps: int, target: Target) -> str:
    """A note on one step of a decoding program that generates `decode_steps` tokens a row per decode loop: each
    step reads at least the chip's share of the weights (bytes) from HBM and runs the collectives of one iteration
    of the decode loop (`decode_loop`)."""
    weights_s = weight_bytes_per_chip / target.hbm_bandwidth
    loop = decode_loop(report, decode_steps)
    collective_s = loop["collective_time_s"] if loop else 0.0
    where = f"one iteration of {loop['name']}" if loop else "no loop found"
    gathered = f", {loop['collectives'].get('all-gather', 0.0) / GIB:.2f} GiB all-gathered" if loop else ""
    return (f"decode step (1 of {decode_steps}): >= {max(weights_s, collective_s) * 1e3:.3f} ms "
            f"(weights {weight_bytes_per_chip / GIB:.2f} GiB per chip from HBM: {weights_s * 1e3:.3f} ms; "
            f"collectives of {where}{gathered}: {collective_s * 1e3:.3f} ms)")


def fit_advice(report: ProgramReport) -> str:
    """What to change for a report that does not fit, by the part of memory that dominates; '' if it fits."""
    if report.fits:
        return ""
    over = (report.total - report.hbm_bytes) / GIB
    parts = {"arguments": report.arguments, "temporaries": report.temporaries, "outputs": report.outputs}
    largest = max(parts, key=parts.get)
    advice = {
        "arguments": "the inputs (params, optimizer state, batch) dominate: shard params and optimizer state over "
                     "more chips (a larger mesh fsdp axis, or a bigger slice) and keep params in bfloat16",
        "temporaries": "temporaries (activations, KV cache, gathered weights) dominate: raise micro_batches, turn "
                       "remat on, or lower the rollout batch (episodes) or max_new_tokens",
        "outputs": "outputs dominate: donate the inputs they replace (params, optimizer state) so XLA reuses their "
                   "buffers, and shard them like those inputs",
    }[largest]
    return (f"{report.program} needs {report.total / GIB:.2f} GiB per chip, {over:.2f} GiB over the "
            f"{report.hbm_bytes / GIB:.2f} GiB of {report.target}; {advice}.")
