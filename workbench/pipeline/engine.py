"""The papermill engine pipeline steps run with: nbclient's, saving the notebook less often.

papermill's own engine writes the whole output notebook (serialised and schema-validated) at
every cell's start and end, which for a notebook of plotly figures costs tens of milliseconds a
write and a second or more per step. This engine writes it at cell boundaries at most every
:data:`SAVE_EVERY` seconds (a long step's notebook on disk still shows its progress) and always
when the notebook completes or fails; papermill then writes the final notebook as usual.

>>> papermill.execute_notebook(src, out, engine_name=ENGINE)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from nbclient.util import run_hook, run_sync
from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, NotebookExecutionManager, papermill_engines
from papermill.log import logger
from papermill.utils import merge_kwargs, remove_args

ENGINE = "workbench"
SAVE_EVERY = 5.0  # seconds between writes of a running notebook at cell boundaries


class ThrottledManager(NotebookExecutionManager):
    """papermill's execution manager, writing the notebook at most every ``SAVE_EVERY`` s until
    it completes."""

    _final = False

    def save(self, **kwargs: Any) -> None:
        if kwargs.get("nb"):  # what papermill's catch_nb_assignment does
            self.nb = kwargs["nb"]
        if not self._final and (self.now() - self.last_save_time).total_seconds() < SAVE_EVERY:
            return
        super().save(**kwargs)

    def notebook_complete(self, **kwargs: Any) -> None:
        self._final = True  # completed, failed or interrupted: the notebook is written now
        super().notebook_complete(**kwargs)


class ThrottledEngine(NBClientEngine):
    """nbclient execution (as papermill's default engine) with :class:`ThrottledManager`; given
    ``kc``, a client already connected to the kernel of ``km``, the notebook runs on it."""

    @classmethod
    def execute_managed_notebook(
        cls,
        nb_man: Any,
        kernel_name: str,
        log_output: bool = False,
        stdout_file: Any = None,
        stderr_file: Any = None,
        start_timeout: int = 60,
        execution_timeout: int | None = None,
        kc: Any = None,
        **kwargs: Any,
    ) -> Any:
        if kc is None:
            return super().execute_managed_notebook(
                nb_man, kernel_name, log_output, stdout_file, stderr_file, start_timeout,
                execution_timeout, **kwargs,
            )  # fmt: skip
        # NBClientEngine.execute_managed_notebook's arguments, then the client set beforehand
        # (nbclient starts a client only when it has none)
        kwargs = remove_args(["input_path"], **kwargs)
        safe_kwargs = remove_args(["timeout", "startup_timeout"], **kwargs)
        final_kwargs = merge_kwargs(
            safe_kwargs,
            timeout=execution_timeout if execution_timeout else kwargs.get("timeout"),
            startup_timeout=start_timeout,
            kernel_name=kernel_name,
            log=logger,
            log_output=log_output,
            stdout_file=stdout_file,
            stderr_file=stderr_file,
        )
        client = PapermillNotebookClient(nb_man, **final_kwargs)
        if client.km is None or not client.km.has_kernel:
            raise ValueError("kc needs km: the manager of the running kernel kc is connected to")
        client.kc = kc
        kc.allow_stdin = False  # what nbclient's start_new_kernel_client sets
        run_sync(run_hook)(client.on_notebook_start, notebook=client.nb)
        return client.execute()

    @classmethod
    def execute_notebook(
        cls,
        nb: Any,
        kernel_name: str,
        output_path: str | None = None,
        progress_bar: bool = True,
        log_output: bool = False,
        autosave_cell_every: int = 30,
        **kwargs: Any,
    ) -> Any:
        nb_man = ThrottledManager(
            nb,
            output_path=output_path,
            progress_bar=progress_bar,
            log_output=log_output,
            autosave_cell_every=autosave_cell_every,
        )
        nb_man.notebook_start()
        try:
            cls.execute_managed_notebook(nb_man, kernel_name, log_output=log_output, **kwargs)
        finally:
            nb_man.cleanup_pbar()
            nb_man.notebook_complete()
        return nb_man.nb


papermill_engines.register(ENGINE, ThrottledEngine)
