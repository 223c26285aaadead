"""Pipeline specs: name, shared parameters, notebook steps and the outputs they hand on.

A spec is YAML::

    name: research
    parameters:            # shared; override with `wb run research -p alpha=0.05`
      seed: 7
    steps:
      - name: ingest
        notebook: notebooks/01_ingest.ipynb
        parameters: {seed: "${seed}"}
        outputs: [store_root]            # keys this step hands on
      - name: features
        notebook: notebooks/02_features.ipynb
        parameters: {store_root: "${steps.ingest.store_root}"}

``${name}`` is a shared parameter, ``${steps.<step>.<key>}`` an output of an earlier step,
``${run.dir}`` the run folder, ``${run.session}`` the trading session the run is for (ISO date). A string that is exactly one reference takes the referenced value
with its type; references inside longer strings are formatted in. An undefined reference is an
error, never a blank. Every parameter must exist in the notebook's ``parameters`` cell with a
compatible type (papermill only warns about unknown parameters; we refuse).

A step with ``when: ${steps.validate.passed}`` (or ``when: not ${...}``) runs only if that
output (or shared parameter) is true; it must be a bool. Otherwise the step is recorded as
``skipped`` with the reason, and so is every later step that needs the skipped step's outputs.
``timeout`` sets the longest a cell of the step may run, in seconds (default 900; a trading
session that runs until the close needs hours).

A shared parameter (or ``-p`` override) ``universe:NAME`` becomes the current members of that
universe (:mod:`workbench.portfolio.universe`, ``runs/universe.db``) when the spec is validated,
so steps take a list of symbols with ``"${symbols}"``; a universe without members is an error.
"""

from __future__ import annotations

import difflib
import re
import typing
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from workbench.config import yaml_load
from workbench.errors import PipelineError, WorkbenchError

RUNNER_PARAMETERS = ("output_path", "parent_run_id", "pipeline")
RUN_REFERENCES = ("run.dir", "run.session")
_REF = re.compile(r"\$\{([^}]+)\}")
_WHEN = re.compile(r"^\s*(not\s+)?\$\{([^}]+)\}\s*$")


class StepSpec(BaseModel):
    """One notebook step."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    notebook: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    description: str = ""
    when: str | None = None  # ${steps.<step>.<output>} or ${param}, optionally "not ${...}"
    timeout: int | None = Field(None, ge=1)  # seconds a cell may run (None: the runner's default)


class PipelineSpec(BaseModel):
    """A pipeline: shared parameters and ordered steps."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)
    steps: tuple[StepSpec, ...] = Field(min_length=1)  # an empty pipeline is refused


def _plain(value: Any) -> Any:
    """Dates from YAML become ISO strings (notebook parameters are plain literals)."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _suggest(key: str, valid: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def resolve_spec_path(name_or_path: str | Path, root: Path) -> Path:
    """Accept ``research``, ``research.yaml`` or a path; raise naming the available pipelines."""
    p = Path(name_or_path)
    candidates = [p, root / p, root / "pipelines" / p, root / "pipelines" / f"{p}.yaml"]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    have = sorted(f.stem for f in (root / "pipelines").glob("*.yaml") if f.stem != "schedule")
    raise PipelineError(
        f"pipeline {str(name_or_path)!r} not found; available: {have}.{_suggest(p.stem, have)}"
    )


def load_spec(path: str | Path) -> PipelineSpec:
    """Read and check a pipeline spec file (unknown keys are errors)."""
    path = Path(path)
    try:
        raw = yaml_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML ({exc}).") from exc
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: expected a mapping with name, parameters and steps.")
    if "jobs" in raw and "steps" not in raw:
        raise PipelineError(
            f"{path} is a schedule, not a pipeline. Fix: run a pipeline it names (wb run "
            "daily_ingest) or the schedule itself (wb schedule start | list | next | run-now)."
        )
    raw = _plain(raw)
    try:
        spec = PipelineSpec(**raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"])
            hint = ""
            if err["type"] == "extra_forbidden":
                model = StepSpec if "steps" in loc else PipelineSpec
                hint = _suggest(str(err["loc"][-1]), model.model_fields)
            elif err["type"] == "too_short" and loc == "steps":
                hint = " Fix: list at least one step (an empty pipeline would record a success that did nothing)."
            lines.append(f"{loc}: {err['msg']}.{hint}")
        raise PipelineError(f"{path}: invalid pipeline spec:\n  " + "\n  ".join(lines)) from None
    names = [s.name for s in spec.steps]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise PipelineError(f"{path}: step names must be unique; repeated: {dup}.")
    return spec


def parse_overrides(items: typing.Sequence[str], spec: PipelineSpec) -> dict[str, Any]:
    """Parse ``key=value`` overrides (values as YAML) and refuse unknown keys."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise PipelineError(f"override {item!r} is not key=value; e.g. -p alpha=0.05")
        k, v = item.split("=", 1)
        k = k.strip()
        if k not in spec.parameters:
            raise PipelineError(
                f"pipeline {spec.name!r} has no parameter {k!r}; valid: {sorted(spec.parameters)}.{_suggest(k, spec.parameters)}"
            )
        try:
            out[k] = _plain(yaml_load(v))
        except yaml.YAMLError:
            out[k] = v
    return out


def parse_when(text: str, where: str) -> tuple[str, bool]:
    """Return ``(reference, negated)`` of a ``when:`` condition, or raise naming the fix."""
    m = _WHEN.match(text)
    if not m:
        raise PipelineError(
            f"{where}: when = {text!r} is not a condition. Fix: a single reference such as "
            "'${steps.validate.passed}' or 'not ${steps.validate.passed}'."
        )
    return m.group(2).strip(), bool(m.group(1))


def substitute(value: Any, scope: dict[str, Any], where: str) -> Any:
    """Replace ``${...}`` references using ``scope`` (dotted keys); undefined is an error."""
    if isinstance(value, dict):
        return {k: substitute(v, scope, where) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, scope, where) for v in value]
    if not isinstance(value, str):
        return value

    def look(ref: str) -> Any:
        if ref not in scope:
            raise PipelineError(
                f"{where}: undefined reference ${{{ref}}}; defined: {sorted(scope)}.{_suggest(ref, scope)}"
            )
        return scope[ref]

    whole = _REF.fullmatch(value.strip())
    if whole:
        return look(whole.group(1).strip())
    return _REF.sub(lambda m: str(look(m.group(1).strip())), value)


def references(value: Any) -> list[str]:
    """Return every ``${...}`` reference in a parameter value."""
    if isinstance(value, dict):
        return [r for v in value.values() for r in references(v)]
    if isinstance(value, list):
        return [r for v in value for r in references(v)]
    return [m.strip() for m in _REF.findall(value)] if isinstance(value, str) else []


_TYPE_NS = {n: getattr(typing, n) for n in ("Any", "Optional", "Union", "Literal")} | {
    "list": list,
    "dict": dict,
    "tuple": tuple,
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "None": None,
}


def annotation(type_name: str) -> Any:
    """Turn papermill's inferred type text (``'list[str]'``) into a type; ``None`` if untyped."""
    if not type_name or type_name == "None":
        return None
    try:
        return eval(type_name, {"__builtins__": {}}, _TYPE_NS)
    except Exception as exc:  # an exotic annotation: be explicit rather than guess
        raise PipelineError(
            f"cannot interpret the parameter annotation {type_name!r}; use builtin types."
        ) from exc


def check_type(value: Any, type_name: str) -> str | None:
    """Return None if ``value`` fits the annotation, else a short reason."""
    ann = annotation(type_name)
    if ann is None:
        return None
    try:
        TypeAdapter(ann).validate_python(value, strict=True)
    except ValidationError as exc:
        return exc.errors()[0]["msg"]
    return None


def notebook_parameters(path: Path) -> dict[str, dict[str, Any]]:
    """Return the notebook's parameters cell as papermill sees it (name -> type, default, help)."""
    import papermill

    if not path.is_file():
        raise PipelineError(f"notebook {path} does not exist.")
    return papermill.inspect_notebook(str(path))


def _universe_members(key: str, value: Any, root: Path, problems: list[str]) -> Any:
    # a shared value "universe:NAME" becomes that universe's members; others pass through
    if not (isinstance(value, str) and value.strip().startswith("universe:")):
        return value
    from workbench.portfolio.universe import resolve_symbols

    try:
        return resolve_symbols(value, root=root)
    except WorkbenchError as exc:
        problems.append(f"shared parameter {key!r} = {value!r}: {exc}")
        return value


def _check_when(
    text: str,
    where: str,
    declared: dict[str, tuple[str, ...]],
    shared: dict[str, Any],
    problems: list[str],
) -> None:
    try:
        ref, _ = parse_when(text, where)
    except PipelineError as exc:
        problems.append(str(exc))
        return
    if ref.startswith("steps."):
        parts = ref.split(".")
        if len(parts) != 3 or parts[1] not in declared:
            problems.append(
                f"{where}: when = {text!r} must name an earlier step as ${{steps.<step>.<output>}}; "
                f"earlier steps: {sorted(declared)}.{_suggest(parts[1] if len(parts) > 1 else ref, declared)}"
            )
        elif parts[2] not in declared[parts[1]]:
            problems.append(
                f"{where}: when = {text!r}: step {parts[1]!r} does not hand on {parts[2]!r}; it declares "
                f"outputs {list(declared[parts[1]])}. Fix: add it to that step's outputs and hand it on."
            )
    elif ref not in shared:
        problems.append(
            f"{where}: when = {text!r}: undefined reference ${{{ref}}}; shared parameters: "
            f"{sorted(shared)}.{_suggest(ref, shared)}"
        )
    elif not isinstance(shared[ref], bool):
        problems.append(
            f"{where}: when = {text!r}: shared parameter {ref!r} is {shared[ref]!r}, not true or false. "
            "Fix: make it a bool."
        )


def validate_spec(
    spec: PipelineSpec, overrides: dict[str, Any], root: Path, cfg: Any = None
) -> dict[str, Any]:
    """Validate a whole spec before anything runs; return the shared parameters after overrides.

    Checks every notebook exists and declares the runner's parameters, every step parameter
    exists in its notebook with a compatible type, every reference is defined (outputs only
    of earlier steps that declare them), and the values that feed config models are valid
    (:func:`check_values`; ``cfg`` names the configured strategies). All problems are reported
    together. Shared values ``universe:NAME`` are replaced by the universe's members first.
    """
    problems: list[str] = []
    shared = {
        k: _universe_members(k, v, root, problems)
        for k, v in {**spec.parameters, **overrides}.items()
    }
    declared: dict[str, tuple[str, ...]] = {}
    value_steps: dict[str, list[str]] = {}  # one line per bad value, naming every step it reaches
    for step in spec.steps:
        where = f"step {step.name!r}"
        if step.when is not None:
            _check_when(step.when, where, declared, shared, problems)
        try:
            nb_params = notebook_parameters(root / step.notebook)
        except PipelineError as exc:
            problems.append(f"{where}: {exc}")
            declared[step.name] = step.outputs
            continue
        resolved_params: dict[str, Any] = {}
        missing = [p for p in RUNNER_PARAMETERS if p not in nb_params]
        if missing:
            problems.append(
                f"{where}: notebook {step.notebook} lacks runner parameter(s) {missing} in its parameters cell."
            )
        for pname, value in step.parameters.items():
            if pname not in nb_params:
                valid = sorted(p for p in nb_params if p not in RUNNER_PARAMETERS)
                problems.append(
                    f"{where}: parameter {pname!r} is not in {step.notebook}'s parameters cell; valid names: {valid}.{_suggest(pname, valid)}"
                )
                continue
            refs = references(value)
            bad = False
            for ref in refs:
                if ref.startswith("steps."):
                    parts = ref.split(".")
                    if len(parts) != 3 or parts[1] not in declared:
                        problems.append(
                            f"{where}: ${{{ref}}} must name an earlier step as steps.<step>.<output>; earlier: {sorted(declared)}."
                        )
                        bad = True
                    elif parts[2] not in declared[parts[1]]:
                        problems.append(
                            f"{where}: step {parts[1]!r} does not hand on {parts[2]!r}; it declares outputs {list(declared[parts[1]])}."
                        )
                        bad = True
                elif ref not in RUN_REFERENCES and ref not in shared:
                    problems.append(
                        f"{where}: undefined reference ${{{ref}}}; shared parameters: {sorted(shared)}.{_suggest(ref, shared)}"
                    )
                    bad = True
            if bad or any(r.startswith("steps.") or r in RUN_REFERENCES for r in refs):
                continue  # checked again at run time, once the value exists
            resolved = substitute(value, shared, where)
            reason = check_type(resolved, nb_params[pname]["inferred_type_name"])
            if reason:
                problems.append(
                    f"{where}: parameter {pname!r} = {resolved!r} does not fit its annotation "
                    f"{nb_params[pname]['inferred_type_name']} ({reason})."
                )
            else:
                resolved_params[pname] = resolved
        for text in _value_problems(resolved_params, cfg):
            value_steps.setdefault(text, []).append(step.name)
        declared[step.name] = step.outputs
    problems += [f"step(s) {', '.join(map(repr, on))}: {text}" for text, on in value_steps.items()]
    if problems:
        raise PipelineError(
            f"pipeline {spec.name!r} is invalid; nothing was run:\n  - " + "\n  - ".join(problems)
        )
    return shared


# --------------------------------------------------------------------------------------------
# values: parameters that feed config models are checked before anything runs


def _date_value(v: Any) -> str | None:
    if not isinstance(v, str):
        return None  # the annotation check reports the type
    try:
        date.fromisoformat(v)
    except ValueError as exc:
        return f"not a calendar date ({exc}). Fix: a real date as YYYY-MM-DD, e.g. 2024-02-29"
    return None


def _timeframe_value(v: Any) -> str | None:
    from workbench.data.timeframe import Timeframe

    try:
        Timeframe.parse(v)
    except WorkbenchError as exc:
        return str(exc)
    return None


def _field_value(model: type[BaseModel], name: str) -> Any:
    """Check a value against a config model's field (its type and bounds)."""

    def check(v: Any) -> str | None:
        fld = model.model_fields[name]
        try:
            TypeAdapter(typing.Annotated[fld.annotation, *fld.metadata]).validate_python(v)
        except ValidationError as exc:
            bounds = ", ".join(str(m) for m in fld.metadata) or str(fld.annotation)
            return (
                f"{exc.errors()[0]['msg']} (as {model.__name__}.{name}: {bounds}). "
                f"Fix: a value within those bounds"
            )
        return None

    return check


def _seed_value(v: Any) -> str | None:
    if isinstance(v, int) and not isinstance(v, bool) and not 0 <= v < 2**32:
        return "seeds are 0 <= seed < 2**32 (numpy and LightGBM). Fix: a non-negative integer"
    return None


def _count_value(v: Any) -> str | None:
    if isinstance(v, int) and not isinstance(v, bool) and v < 0:
        return "must be >= 0 (0 means the strategy's setting). Fix: a non-negative integer"
    return None


def _fraction_value(v: Any) -> str | None:
    if isinstance(v, int | float) and not isinstance(v, bool) and not 0 < v < 1:
        return "must be strictly between 0 and 1. Fix: e.g. 0.6"
    return None


def _symbols_value(v: Any) -> str | None:
    if isinstance(v, list | tuple) and not v:
        return "an empty symbol list. Fix: list at least one symbol, e.g. [SYN000, SYN001]"
    if isinstance(v, list | tuple) and any(not str(s).strip() for s in v):
        return "holds an empty symbol. Fix: remove the empty entry"
    return None


def _choice_value(*choices: str) -> Any:
    def check(v: Any) -> str | None:
        if isinstance(v, str) and v not in choices:
            return f"not one of {list(choices)}.{_suggest(v, choices)} Fix: pick one of them"
        return None

    return check


def _value_checks(cfg: Any) -> dict[str, Any]:
    from workbench.config import SimulatorConfig

    def strategy(v: Any) -> str | None:
        if cfg is None or not isinstance(v, str) or v in cfg.strategies:
            return None
        return (
            f"not a configured strategy; configured: {sorted(cfg.strategies)}."
            f"{_suggest(v, cfg.strategies)} Fix: add config/strategies/{v}.yaml or pick one of them"
        )

    return {
        "timeframe": _timeframe_value,
        "start": _date_value,
        "end": _date_value,
        "session_date": lambda v: _date_value(v) if v else None,
        "alpha": _field_value(SimulatorConfig, "alpha"),
        "vwap_reversion": _field_value(SimulatorConfig, "vwap_reversion"),
        "trend": _field_value(SimulatorConfig, "trend"),
        "seed": _seed_value,
        "n_trials": _count_value,
        "n_folds": _count_value,
        "pbo_configs": _count_value,
        "train_frac": _fraction_value,
        "symbols": _symbols_value,
        "strategy": strategy,
        "broker": _choice_value("sim", "alpaca"),
        "mode": _choice_value("replay", "live"),
    }


def check_values(params: dict[str, Any], where: str, cfg: Any = None) -> list[str]:
    """Return a problem per parameter whose value a config model or the data layer refuses.

    The parameters checked by name: ``timeframe`` (a known bar length), ``start``, ``end`` and
    ``session_date`` (real calendar dates, ``start <= end``), ``alpha``, ``vwap_reversion`` and
    ``trend`` (the simulator's bounds),
    ``seed`` (``0 <= seed < 2**32``), ``n_trials``/``n_folds``/``pbo_configs`` (``>= 0``),
    ``train_frac`` (in (0, 1)), ``symbols`` (not empty), ``strategy`` (a configured one) and
    ``broker``/``mode``. Values that are still references (``${steps...}``) are skipped.
    """
    return [f"{where}: {text}" for text in _value_problems(params, cfg)]


def _value_problems(params: dict[str, Any], cfg: Any) -> list[str]:
    checks = _value_checks(cfg)
    problems = []
    for name, value in params.items():
        if name not in checks or references(value):
            continue
        reason = checks[name](value)
        if reason:
            end = "" if reason.endswith((".", "?")) else "."
            problems.append(f"parameter {name!r} = {value!r}: {reason}{end}")
    lo, hi = params.get("start"), params.get("end")
    if (
        isinstance(lo, str)
        and isinstance(hi, str)
        and not (_date_value(lo) or _date_value(hi))
        and date.fromisoformat(hi) < date.fromisoformat(lo)
    ):
        problems.append(f"end = {hi!r} is before start = {lo!r}. Fix: set end on or after start.")
    return problems
