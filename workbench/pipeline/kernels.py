"""Kernels for pipeline steps: a fresh kernel process per step, started one step ahead.

Starting a kernel and importing the scientific stack in it takes seconds; a step's own work can
take less. So while a step runs, the kernel the next step is expected to need is started in the
background, with the kernel spec, environment and working folder that step will run with, and
the modules its notebook imports are imported in it (imports only: none of the notebook's code
runs there). When the next step starts it takes that kernel only if the kernel spec, the
environment and the folder it needs now are exactly those the kernel was started with, and the
kernel was warmed for the same notebook; otherwise that kernel is shut down and a fresh one is
started. A kernel serves one step and is shut down after it, so steps share no state.

A kernel whose step finished is shut down in the background (an interpreter with the scientific
stack loaded takes a second or two to exit); :meth:`KernelPool.close` waits for every one.

>>> with KernelPool() as pool:  # doctest: +SKIP
...     pool.prepare(KernelKey.for_step(nb_path, env))
...     km = pool.take(KernelKey.for_step(nb_path, env))  # the warmed kernel, or a fresh one
...     papermill.execute_notebook(..., km=km)
...     pool.release(km)
"""

from __future__ import annotations

import ast
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Modules a workbench step imports at run time whatever its notebook's import cell says: the MLflow
# client and its SQL stores (start_stage), plotly's renderers (setup_display; they import
# nbformat and jsonschema) and the figure classes the stages draw with (plotly imports each
# lazily, on first use).
WORKBENCH_WARM = (
    "IPython.core.display",
    "polars",
    "plotly.io._renderers",
    "plotly.graph_objs._figure",
    "plotly.graph_objs._scatter",
    "plotly.graph_objs._bar",
    "plotly.subplots",
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
)
# nbclient starts its kernels with this history file (its ``ipython_hist_file`` default); a
# kernel started here for nbclient to use gets the same argument.
EXTRA_ARGUMENTS = ("--HistoryManager.hist_file=:memory:",)
# Set by MLflow in the process that imported it and unset when its telemetry client goes away:
# not something a step's kernel needs (it opens its own telemetry session), and not inherited.
NOT_INHERITED = ("_MLFLOW_TELEMETRY_SESSION_ID",)
WARM_TIMEOUT = 300.0  # seconds the imports may take before the kernel is given up (fresh start)

_WARM_CODE = """\
def __wb_warm(names):
    import importlib
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # the notebook's own import raises it where the user sees it
            pass
__wb_warm({names})
del __wb_warm
"""


@dataclass(frozen=True)
class KernelKey:
    """What a step's kernel must match: kernel spec, working folder, environment, notebook."""

    kernel_name: str
    cwd: str
    env: tuple[tuple[str, str], ...]
    notebook: str

    @classmethod
    def for_step(
        cls,
        notebook: Path,
        extra_env: Mapping[str, str] | None = None,
        kernel_name: str = "python3",
    ) -> KernelKey:
        """The key of a step run now: this process's environment plus ``extra_env``, in the
        notebook's folder."""
        env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
        env.update(extra_env or {})
        return cls(kernel_name, str(notebook.parent), tuple(sorted(env.items())), str(notebook))


def notebook_imports(notebook: Path) -> list[str]:
    """The modules a notebook's code cells import at top level (``import a.b`` -> ``a.b``,
    ``from a.b import c`` -> ``a.b``), in order; a cell that does not parse is passed over."""
    try:
        cells = json.loads(notebook.read_text()).get("cells", [])
    except (OSError, ValueError):
        return []
    names: list[str] = []
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        src = cell.get("source", "")
        src = "".join(src) if isinstance(src, list) else src
        # IPython magics and shell escapes are not Python
        src = "\n".join(ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!")))
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, ast.Import):
                names += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.append(node.module)
    return list(dict.fromkeys(names))


def warm_modules(notebook: Path) -> list[str]:
    """What a kernel warmed for ``notebook`` imports: its imports, and :data:`WORKBENCH_WARM`
    when it imports the workbench."""
    own = notebook_imports(notebook)
    uses_workbench = any(m == "workbench" or m.startswith("workbench.") for m in own)
    return list(dict.fromkeys([*(WORKBENCH_WARM if uses_workbench else ()), *own]))


def new_kernel_manager(kernel_name: str = "python3") -> Any:
    """A kernel manager with CurveZMQ transport encryption when pyzmq supports it (the kernel
    then does not warn "Kernel is running over TCP without encryption" into the run's output)."""
    import zmq
    from jupyter_client.manager import KernelManager

    return KernelManager(
        kernel_name=kernel_name, transport_encryption="auto" if zmq.has("curve") else "disabled"
    )


def start_kernel(key: KernelKey, warm: list[str] | None = None, timeout: float = 60.0) -> Any:
    """Start a kernel for ``key`` (its spec, folder and environment), wait until it answers, and
    import ``warm`` in it; return its manager. Raises when the kernel does not start.

    The connected client stays open as ``km.wb_client`` (the papermill engine executes the
    notebook on it: no second connection and readiness wait); :func:`shutdown` closes it."""
    km = new_kernel_manager(key.kernel_name)
    km.start_kernel(extra_arguments=list(EXTRA_ARGUMENTS), cwd=key.cwd, env=dict(key.env))
    kc = km.client()
    try:
        kc.start_channels()
        kc.wait_for_ready(timeout=timeout)
        if warm:
            code = _WARM_CODE.format(names=repr(list(warm)))
            msg_id = kc.execute(code, silent=True, store_history=False, allow_stdin=False)
            while True:  # the reply to this request (nothing else is sent on this client)
                reply = kc.get_shell_msg(timeout=WARM_TIMEOUT)
                if reply["parent_header"].get("msg_id") == msg_id:
                    break
    except BaseException:
        kc.stop_channels()
        shutdown(km, now=True)
        raise
    km.wb_client = kc
    return km


def shutdown(km: Any, now: bool = False) -> None:
    """Shut a kernel down (graceful unless ``now``) and free its client and connection files."""
    kc = getattr(km, "wb_client", None)
    if kc is not None:
        km.wb_client = None
        kc.stop_channels()
    try:
        if km.has_kernel:
            km.shutdown_kernel(now=now)
    finally:
        km.cleanup_resources()


class KernelPool:
    """Kernels started ahead for the steps expected next (at most ``ahead`` of them, oldest
    first), each for one step; shutdowns in the background."""

    def __init__(self, ahead: int = 2) -> None:
        self.ahead = ahead
        self._pending: list[_Pending] = []
        self._closing: list[threading.Thread] = []

    def __enter__(self) -> KernelPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prepare(self, key: KernelKey) -> None:
        """Start a kernel for ``key`` in the background (the oldest prepared one is dropped when
        ``ahead`` are already waiting)."""
        if self.ahead < 1:
            return
        while len(self._pending) >= self.ahead:
            self._discard(self._pending.pop(0))
        self._pending.append(_Pending(key))

    def take(self, key: KernelKey) -> tuple[Any, bool]:
        """Return ``(kernel manager, warmed)``: the first prepared kernel started for exactly
        ``key`` (those prepared before it are shut down), else a fresh kernel started now."""
        match = next((j for j, p in enumerate(self._pending) if p.key == key), None)
        if match is None:
            if self._pending:  # the step expected next did not come
                self._discard(self._pending.pop(0))
            return start_kernel(key), False
        for _ in range(match):  # prepared for steps that did not come (skipped)
            self._discard(self._pending.pop(0))
        km = self._pending.pop(0).wait()
        if km is not None and km.is_alive():
            return km, True
        if km is not None:
            self.release(km, now=True)
        return start_kernel(key), False

    def release(self, km: Any, *, background: bool = True, now: bool = False) -> None:
        """Shut down a kernel whose step is over (in the background unless told otherwise)."""
        if not background:
            shutdown(km, now=now)
            return
        t = threading.Thread(target=shutdown, args=(km, now), name="wb-kernel-stop", daemon=True)
        t.start()
        self._closing.append(t)

    def _discard(self, pending: _Pending) -> None:
        def stop() -> None:
            km = pending.wait()
            if km is not None:
                shutdown(km, now=True)  # never used: nothing of a step's ran there

        t = threading.Thread(target=stop, name="wb-kernel-stop", daemon=True)
        t.start()
        self._closing.append(t)

    def close(self) -> None:
        """Shut down the prepared kernels and wait for every shutdown under way."""
        while self._pending:
            self._discard(self._pending.pop(0))
        for t in self._closing:
            t.join()
        self._closing.clear()


class _Pending:
    """A kernel being started (and warmed) in a background thread."""

    def __init__(self, key: KernelKey) -> None:
        self.key = key
        self.km: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="wb-kernel-warm", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.km = start_kernel(self.key, warm_modules(Path(self.key.notebook)))
        except BaseException as exc:  # the step starts a fresh kernel instead
            self.error = exc

    def wait(self) -> Any:
        """The started kernel's manager, or None when it did not start."""
        self._thread.join()
        return self.km
