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

from papermill.engines import NBClientEngine, NotebookExecutionManager, papermill_engines

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
    """nbclient execution (as papermill's default engine) with :class:`ThrottledManager`."""

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
