"""Feature diagnostics: IC, rank IC, ICIR, decile returns and feature correlation, with figures.

Data functions take a feature frame and a label frame keyed by ``(symbol, ts)`` (as
:func:`~workbench.features.build_features` and :mod:`workbench.labels` return them), join them on
the key, drop rows whose label is null, and return polars frames. ``plot_*`` functions turn those
frames into ``plotly.graph_objects.Figure`` objects for notebooks and MLflow.

Periods (``by``): ``'ts'`` computes one cross-sectional statistic per timestamp, ``'date'`` one
per New York session date (pooling the session's bars; useful with few symbols), ``None`` pools all
rows into one period, and any other column name of the joined frame groups by that column.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import polars as pl

from workbench.data.schema import KEY
from workbench.errors import ConfigError, SchemaError
from workbench.features._expr import check_int, did_you_mean, local_clock

_PERIOD = "_period"
_DAY_US = 86_400_000_000


def _join(
    features: pl.DataFrame,
    labels: pl.DataFrame,
    label: str,
    cols: Sequence[str] | None,
    by: str | None,
) -> tuple[pl.DataFrame, list[str]]:
    for name, frame in (("features", features), ("labels", labels)):
        missing = [k for k in KEY if k not in frame.columns]
        if missing:
            raise SchemaError(f"{name} frame lacks key column(s) {missing}.", rule="missing column")
    if label not in labels.columns:
        raise SchemaError(
            f"The 'label' parameter names {label!r}, which the label frame lacks"
            f"{did_you_mean(label, labels.columns)}; it has {labels.columns}.",
            rule="missing column",
        )
    if cols is None:
        cols = [c for c, t in features.schema.items() if c not in KEY and t.is_numeric()]
    cols = list(cols)
    unknown = [c for c in cols if c not in features.columns]
    if unknown:
        raise SchemaError(
            f"feature column {unknown[0]!r} is not in the feature frame"
            f"{did_you_mean(unknown[0], features.columns)}.",
            rule="missing column",
        )
    if not cols:
        raise ConfigError("no numeric feature columns to diagnose. Fix: pass features=[...].")
    lab = labels.select(*KEY, pl.col(label).cast(pl.Float64).alias("_label"))
    joined = features.select(*KEY, *(pl.col(c).cast(pl.Float64) for c in cols)).join(
        lab, on=list(KEY), how="inner"
    )
    joined = joined.filter(pl.col("_label").is_not_null() & pl.col("_label").is_not_nan())
    if by is None:
        period = pl.lit(0).alias(_PERIOD)
    elif by == "ts":
        period = pl.col("ts").alias(_PERIOD)
    elif by == "date":
        days = local_clock(joined.get_column("ts"), "America/New_York") // _DAY_US
        period = pl.Series(_PERIOD, days)
    elif by in features.columns or by in labels.columns:
        extra = features if by in features.columns else labels
        joined = joined.join(extra.select(*KEY, by), on=list(KEY), how="left")
        period = pl.col(by).alias(_PERIOD)
    else:
        raise ConfigError(
            f"The 'by' parameter must be 'ts', 'date', None or a column name. Got {by!r} instead."
        )
    return joined.with_columns(period), cols


def ic_series(
    features: pl.DataFrame,
    labels: pl.DataFrame,
    *,
    label: str = "label",
    columns: Sequence[str] | None = None,
    by: str | None = "ts",
    method: str = "spearman",
    min_obs: int = 5,
) -> pl.DataFrame:
    """Return the information coefficient of each feature per period.

    Parameters
    ----------
    features, labels : pl.DataFrame
        Frames keyed by ``(symbol, ts)``.
    label : str
        Label column.
    columns : sequence of str, optional
        Feature columns (default: every numeric non-key column).
    by : str or None
        Period definition (see the module docstring).
    method : {'spearman', 'pearson'}
        Rank IC or IC.
    min_obs : int
        Periods with fewer complete (feature, label) pairs are skipped.

    Returns
    -------
    pl.DataFrame
        ``period, feature, ic, n`` sorted by feature then period.
    """
    if method not in ("spearman", "pearson"):
        raise ConfigError(
            f"The 'method' parameter of ic_series must be 'spearman' or 'pearson'. Got {method!r}."
        )
    min_obs = check_int("ic_series", "min_obs", min_obs, 3)
    joined, cols = _join(features, labels, label, columns, by)
    parts = []
    for col in cols:
        pair = joined.filter(pl.col(col).is_not_null() & pl.col(col).is_not_nan())
        x, y = pl.col(col), pl.col("_label")
        if method == "spearman":
            x, y = x.rank("average"), y.rank("average")
        stats = (
            pair.group_by(_PERIOD)
            .agg(pl.corr(x, y).alias("ic"), pl.len().alias("n"))
            .filter(
                (pl.col("n") >= min_obs) & pl.col("ic").is_not_null() & pl.col("ic").is_not_nan()
            )
            .with_columns(pl.lit(col).alias("feature"))
        )
        parts.append(
            stats.select(
                pl.col(_PERIOD).alias("period"), "feature", "ic", pl.col("n").cast(pl.Int64)
            )
        )
    out = pl.concat(parts, how="vertical_relaxed") if parts else pl.DataFrame()
    return out.sort("feature", "period")


def ic_summary(
    features: pl.DataFrame,
    labels: pl.DataFrame,
    *,
    label: str = "label",
    columns: Sequence[str] | None = None,
    by: str | None = "ts",
    min_obs: int = 5,
) -> pl.DataFrame:
    """Return IC, rank IC and their information ratios per feature.

    ``ic`` / ``rank_ic`` are the means of the per-period Pearson / Spearman ICs, ``*_std`` their
    sample standard deviations, ``icir = ic / ic_std`` and ``rank_icir`` likewise (per period,
    not annualised), ``t_stat = rank_icir · sqrt(n_periods)``.

    Parameters
    ----------
    features, labels : pl.DataFrame
        Frames keyed by ``(symbol, ts)``.
    label : str
        Label column.
    columns : sequence of str, optional
        Feature columns (default: every numeric non-key column).
    by : str or None
        Period definition (see the module docstring).
    min_obs : int
        Periods with fewer complete pairs are skipped.

    Returns
    -------
    pl.DataFrame
        One row per feature: ``feature, ic, ic_std, icir, rank_ic, rank_ic_std, rank_icir,
        t_stat, n_periods``, sorted by ``|rank_ic|`` descending.
    """
    kw = {"label": label, "columns": columns, "by": by, "min_obs": min_obs}
    pearson = ic_series(features, labels, method="pearson", **kw)
    spearman = ic_series(features, labels, method="spearman", **kw)

    def agg(frame: pl.DataFrame, prefix: str) -> pl.DataFrame:
        mean, std = pl.col("ic").mean(), pl.col("ic").std()
        return frame.group_by("feature").agg(
            mean.alias(prefix),
            std.alias(f"{prefix}_std"),
            pl.when(std > 0).then(mean / std).otherwise(None).alias(f"{prefix}ir"),
            pl.len().alias("n_periods"),
        )

    a = agg(pearson, "ic")
    b = agg(spearman, "rank_ic").rename({"n_periods": "_n"})
    out = a.join(b, on="feature", how="full", coalesce=True)
    out = out.with_columns(
        (pl.col("rank_icir") * pl.col("_n").cast(pl.Float64).sqrt()).alias("t_stat"),
        pl.coalesce("_n", "n_periods").cast(pl.Int64).alias("n_periods"),
    )
    cols = [
        "feature",
        "ic",
        "ic_std",
        "icir",
        "rank_ic",
        "rank_ic_std",
        "rank_icir",
        "t_stat",
        "n_periods",
    ]
    return out.select(cols).sort(pl.col("rank_ic").abs(), descending=True, nulls_last=True)


def decile_returns(
    features: pl.DataFrame,
    labels: pl.DataFrame,
    feature: str,
    *,
    label: str = "label",
    n_bins: int = 10,
    by: str | None = None,
) -> pl.DataFrame:
    """Return the mean label per quantile bin of a feature.

    Rows are ranked on ``feature`` (within each period when ``by`` is given, else over all rows)
    and cut into ``n_bins`` equal-count bins, 1 = lowest.

    Parameters
    ----------
    features, labels : pl.DataFrame
        Frames keyed by ``(symbol, ts)``.
    feature : str
        Feature column.
    label : str
        Label column.
    n_bins : int
        Number of bins (>= 2).
    by : str or None
        Period for ranking (None pools all rows).

    Returns
    -------
    pl.DataFrame
        ``bin, mean, std, count`` for bins 1..n_bins.
    """
    n_bins = check_int("decile_returns", "n_bins", n_bins, 2)
    joined, _ = _join(features, labels, label, [feature], by)
    x = pl.col(feature)
    joined = joined.filter(x.is_not_null() & x.is_not_nan())
    rank = x.rank("ordinal").over(_PERIOD)
    n = pl.len().over(_PERIOD)
    bin_ = ((rank - 1) * n_bins // n + 1).cast(pl.Int64).alias("bin")
    out = (
        joined.with_columns(bin_)
        .group_by("bin")
        .agg(
            pl.col("_label").mean().alias("mean"),
            pl.col("_label").std().alias("std"),
            pl.len().cast(pl.Int64).alias("count"),
        )
        .sort("bin")
    )
    return out


def feature_correlation(
    features: pl.DataFrame, columns: Sequence[str] | None = None, *, method: str = "spearman"
) -> pl.DataFrame:
    """Return the pairwise correlation matrix of feature columns over complete rows.

    Parameters
    ----------
    features : pl.DataFrame
        Feature frame.
    columns : sequence of str, optional
        Columns (default: every numeric non-key column).
    method : {'spearman', 'pearson'}
        Rank or linear correlation.

    Returns
    -------
    pl.DataFrame
        ``feature`` plus one column per feature (a symmetric matrix with ones on the diagonal;
        null for constant columns).
    """
    if method not in ("spearman", "pearson"):
        raise ConfigError(
            f"The 'method' parameter of feature_correlation must be 'spearman' or 'pearson'. "
            f"Got {method!r}."
        )
    if columns is None:
        columns = [c for c, t in features.schema.items() if c not in KEY and t.is_numeric()]
    cols = list(columns)
    data = features.select(pl.col(c).cast(pl.Float64) for c in cols).fill_nan(None).drop_nulls()
    if method == "spearman":
        data = data.select(pl.col(c).rank("average").cast(pl.Float64) for c in cols)
    mat = data.to_numpy()
    k = len(cols)
    out = np.full((k, k), np.nan)
    if mat.shape[0] >= 2:
        centered = mat - mat.mean(axis=0)
        norm = np.sqrt((centered**2).sum(axis=0))
        ok = norm > 0
        z = np.zeros_like(centered)
        z[:, ok] = centered[:, ok] / norm[ok]
        out = z.T @ z
        out[~ok, :] = np.nan
        out[:, ~ok] = np.nan
    frame = pl.DataFrame({c: out[:, i] for i, c in enumerate(cols)}).fill_nan(None)
    return frame.insert_column(0, pl.Series("feature", cols))


# --------------------------------------------------------------------------------------------
# figures


def plot_ic_summary(summary: pl.DataFrame, *, title: str = "Information coefficient") -> go.Figure:
    """Return grouped bars of IC and rank IC per feature, ICIR in the hover text.

    Parameters
    ----------
    summary : pl.DataFrame
        Output of :func:`ic_summary`.
    title : str
        Figure title.

    Returns
    -------
    plotly.graph_objects.Figure
    """
    feats = summary.get_column("feature").to_list()
    fig = go.Figure()
    for col, ir, name in (("ic", "icir", "IC"), ("rank_ic", "rank_icir", "rank IC")):
        fig.add_trace(
            go.Bar(
                x=feats,
                y=summary.get_column(col).to_list(),
                name=name,
                customdata=summary.get_column(ir).to_list(),
                hovertemplate="%{x}<br>"
                + name
                + " %{y:.4f}<br>IR %{customdata:.3f}<extra></extra>",
            )
        )
    fig.update_layout(title=title, barmode="group", yaxis_title="mean IC per period")
    return fig


def plot_ic_series(series: pl.DataFrame, *, title: str = "Cumulative IC") -> go.Figure:
    """Return one line per feature of the cumulative sum of its per-period IC.

    Parameters
    ----------
    series : pl.DataFrame
        Output of :func:`ic_series`.
    title : str
        Figure title.

    Returns
    -------
    plotly.graph_objects.Figure
    """
    fig = go.Figure()
    for (feat,), part in series.sort("period").group_by("feature", maintain_order=True):
        fig.add_trace(
            go.Scatter(
                x=part.get_column("period").to_list(),
                y=part.get_column("ic").cum_sum().to_list(),
                mode="lines",
                name=str(feat),
            )
        )
    fig.update_layout(title=title, xaxis_title="period", yaxis_title="cumulative IC")
    return fig


def plot_decile_returns(
    deciles: pl.DataFrame, *, feature: str = "", title: str | None = None
) -> go.Figure:
    """Return a bar chart of the mean label per feature bin.

    Parameters
    ----------
    deciles : pl.DataFrame
        Output of :func:`decile_returns`.
    feature : str
        Feature name for the title.
    title : str, optional
        Figure title.

    Returns
    -------
    plotly.graph_objects.Figure
    """
    fig = go.Figure(
        go.Bar(
            x=deciles.get_column("bin").to_list(),
            y=deciles.get_column("mean").to_list(),
            customdata=deciles.get_column("count").to_list(),
            hovertemplate="bin %{x}<br>mean %{y:.6f}<br>n %{customdata}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title or f"Mean label by {feature or 'feature'} bin",
        xaxis_title="bin (1 = lowest)",
        yaxis_title="mean label",
    )
    return fig


def plot_feature_correlation(
    corr: pl.DataFrame, *, title: str = "Feature correlation"
) -> go.Figure:
    """Return a heatmap of a correlation matrix.

    Parameters
    ----------
    corr : pl.DataFrame
        Output of :func:`feature_correlation`.
    title : str
        Figure title.

    Returns
    -------
    plotly.graph_objects.Figure
    """
    names = corr.get_column("feature").to_list()
    z = corr.select(names).to_numpy()
    fig = go.Figure(
        go.Heatmap(
            z=z.tolist(), x=names, y=names, zmin=-1, zmax=1, colorscale="RdBu", reversescale=True
        )
    )
    fig.update_layout(title=title, yaxis_autorange="reversed")
    return fig


def diagnostics_figures(
    features: pl.DataFrame,
    labels: pl.DataFrame,
    *,
    label: str = "label",
    columns: Sequence[str] | None = None,
    by: str | None = "ts",
    n_bins: int = 10,
) -> dict[str, go.Figure]:
    """Return the standard diagnostic figures keyed by name.

    ``ic_summary``, ``ic_series``, ``correlation`` and one ``deciles_<feature>`` per feature.

    Parameters
    ----------
    features, labels : pl.DataFrame
        Frames keyed by ``(symbol, ts)``.
    label : str
        Label column.
    columns : sequence of str, optional
        Feature columns.
    by : str or None
        Period for the IC statistics (deciles pool all rows).
    n_bins : int
        Bins of the decile charts.

    Returns
    -------
    dict of str to plotly.graph_objects.Figure
    """
    _, cols = _join(features, labels, label, columns, None)
    summary = ic_summary(features, labels, label=label, columns=cols, by=by)
    figs = {
        "ic_summary": plot_ic_summary(summary),
        "ic_series": plot_ic_series(ic_series(features, labels, label=label, columns=cols, by=by)),
        "correlation": plot_feature_correlation(feature_correlation(features, cols)),
    }
    for col in cols:
        dec = decile_returns(features, labels, col, label=label, n_bins=n_bins)
        figs[f"deciles_{col}"] = plot_decile_returns(dec, feature=col)
    return figs
