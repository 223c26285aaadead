"""Pipelines: declarative specs of notebook steps, validated, then run with papermill."""

from workbench.pipeline.runner import PipelineResult, run_pipeline
from workbench.pipeline.spec import PipelineSpec, StepSpec, load_spec, validate_spec

__all__ = [
    "PipelineResult",
    "PipelineSpec",
    "StepSpec",
    "load_spec",
    "run_pipeline",
    "validate_spec",
]
