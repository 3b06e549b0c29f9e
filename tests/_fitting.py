"""Tests speak of a fit in policyengine-us-data's words (lambda_l0=..., loss=..., devices=...):
``fit`` here splits those settings into the :class:`jaxcal.Objective` and the sharded matrix
that :func:`jaxcal.fit` takes, and passes the rest through."""

import jaxcal

OBJECTIVE_SETTINGS = ("loss", "lambda_l0", "lambda_l2", "target_groups", "normalize_groups", "group_multipliers")


def objective_and_rest(n_targets, settings, dtype="float32"):
    """``(Objective, remaining settings)`` from keyword settings."""
    chosen = {k: settings[k] for k in OBJECTIVE_SETTINGS if k in settings}
    rest = {k: v for k, v in settings.items() if k not in OBJECTIVE_SETTINGS}
    return jaxcal.Objective.create(n_targets, dtype=dtype, **chosen), rest


def fit(model, matrix, targets, *, devices=None, mesh=None, **settings):
    """:func:`jaxcal.fit` with the objective's settings as keywords, split over ``devices`` or ``mesh``."""
    if devices is not None:
        mesh = jaxcal.record_mesh(devices)
    if mesh is not None:
        matrix = jaxcal.ShardedMatrix.from_matrix(matrix, mesh)
    objective, rest = objective_and_rest(getattr(matrix, "n_targets", 0), settings, getattr(matrix, "dtype", "float32"))
    return jaxcal.fit(model, matrix, targets, objective, **rest)


def sweep(model, matrix, targets, lambda_l0, **settings):
    objective, rest = objective_and_rest(matrix.n_targets, settings, matrix.dtype)
    return jaxcal.sweep(model, matrix, targets, objective, lambda_l0, **rest)


def fit_with_holdout(model, package, split, **settings):
    import jaxcal.workflow

    objective, rest = objective_and_rest(package.n_targets, settings)
    return jaxcal.workflow.fit_with_holdout(model, package, split, objective, **rest)
