"""The one module of builders that touches ``policyengine_us``: everything the builders need
from the model goes through here.

- :func:`load_simulation`: a simulation on a dataset, behind :class:`Simulation`, the narrow
  interface the simulation stage (:mod:`builders.simulation`) runs on (tests pass a fake);
- :func:`variable_entities`: every model variable's entity, without a dataset;
- :func:`county_names`: the model's ``county`` of each county FIPS code;
- :func:`package_version`, for provenance.

``policyengine_us`` is imported inside the functions that need the model (20-45 s), so
importing this module, or any builder, stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np


class Simulation(Protocol):
    """A model run on a base dataset, as the simulation stage uses it."""

    @property
    def variable_entities(self) -> Mapping[str, str]:
        """The entity key (``person``, ``tax_unit``, ``household`` ...) of every variable the model knows."""
        ...

    def calculate(self, variable: str, year: int, map_to: str | None = None) -> np.ndarray:
        """``variable``'s values at its entity (or mapped to the ``map_to`` entity), enums as their names."""
        ...

    def set_input(self, variable: str, year: int, values: np.ndarray) -> None:
        """Replace an input's values for ``year``."""
        ...

    def drop_computed(self) -> None:
        """Forget every computed value, so the next calculation sees the inputs as they are now."""
        ...

    def neutralized(self, variable: str, year: int) -> Simulation:
        """The model on the same dataset with ``variable`` held at 0 in ``year``, as
        policyengine-core's ``neutralize_variable`` reform holds it: the counterfactual of a tax
        expenditure. Its other inputs start as the dataset's."""
        ...


class PolicyEngineSimulation:
    """:class:`Simulation` over a ``policyengine_us.Simulation``, plus the model's uprating indices."""

    def __init__(self, simulation: Any, dataset: str | os.PathLike | None = None) -> None:
        self._simulation = simulation
        self._dataset = dataset
        self._variables = simulation.tax_benefit_system.variables
        self.variable_entities = _entities(self._variables)
        self._neutralized: dict[tuple[str, int], PolicyEngineSimulation] = {}

    def calculate(self, variable: str, year: int, map_to: str | None = None) -> np.ndarray:
        # PolicyEngine's formulas divide by zero on purpose (empty groups, 0/0 state income tax rates), then mask.
        with np.errstate(divide="ignore", invalid="ignore"):
            result = self._simulation.calculate(variable, year, map_to=map_to)
        return np.asarray(result.decode_to_str() if hasattr(result, "decode_to_str") else result)

    def set_input(self, variable: str, year: int, values: np.ndarray) -> None:
        self._simulation.set_input(variable, year, values)

    def drop_computed(self) -> None:
        self._simulation.branches.clear()
        self._simulation.drop_computed_arrays()

    def neutralized(self, variable: str, year: int) -> PolicyEngineSimulation:
        """A second simulation on the dataset, sharing this one's tax-benefit system, in which
        ``variable`` is an input of zeros for ``year``: what it computes there is what
        policyengine-us-data's ``Neutralize_<variable>`` reform computes, without that reform's
        rebuild of the whole tax-benefit system (about a minute per simulation). Kept for reuse."""
        key = (variable, year)
        if key not in self._neutralized:
            if self._dataset is None:
                raise ValueError("a neutralized simulation needs the dataset this one was loaded from")
            copy = PolicyEngineSimulation(type(self._simulation)(dataset=str(self._dataset)), self._dataset)
            entity = self.variable_entities[variable]
            size = copy.calculate(f"{entity}_id", year).size
            held = self._variables[variable]
            copy.set_input(variable, year, np.full(size, held.default_value, dtype=held.dtype))
            self._neutralized[key] = copy
        return self._neutralized[key]

    def uprating_indices(self) -> tuple[Callable[[int], float], Callable[[int], float]]:
        """``(cpi, population)`` by year (``gov.bls.cpi.cpi_u`` and ``calibration.gov.census.populations.total``),
        as :func:`builders.target_db.uprate_targets` takes them."""
        parameters = self._simulation.tax_benefit_system.parameters
        cpi_u = parameters.gov.bls.cpi.cpi_u
        total = parameters.calibration.gov.census.populations.total
        return (lambda year: float(cpi_u(f"{year}-01-01"))), (lambda year: float(total(f"{year}-01-01")))


NOT_INSTALLED = "policyengine-us is not installed; the builders need it: pip install 'jaxcal[policyengine]'"
"""What a builder says on a machine with the engine only (fitting needs no PolicyEngine-US)."""


def load_simulation(dataset: str | os.PathLike) -> PolicyEngineSimulation:
    """A ``policyengine_us.Simulation`` on the H5 ``dataset`` (imports the model: slow)."""
    return PolicyEngineSimulation(_policyengine_us().Simulation(dataset=str(dataset)), dataset)


def variable_entities() -> dict[str, str]:
    """``{variable: entity key}`` for every ``policyengine_us`` variable (imports the model: slow)."""
    return _entities(_policyengine_us().CountryTaxBenefitSystem().variables)


def county_names(county_fips: Sequence[str]) -> dict[str, str]:
    """``{fips: name}``: the ``County`` member (``LOS_ANGELES_COUNTY_CA``, ``UNKNOWN`` when the
    model has none) of each 5-digit county FIPS code, by policyengine-us's own county table, as
    its ``county`` formula maps ``county_fips``."""
    _policyengine_us()
    from policyengine_us.tools.geography.county_helpers import load_county_fips_dataset, map_county_string_to_enum
    from policyengine_us.variables.household.demographic.geographic.county.county_enum import County

    table = load_county_fips_dataset().set_index("county_fips")
    wanted = sorted(set(county_fips))
    known = [fips for fips in wanted if fips in table.index]
    found = dict.fromkeys(wanted, "UNKNOWN")
    if known:
        rows = table.loc[known]
        indices = map_county_string_to_enum(rows["county_name"], rows["state"]).to_numpy()
        found |= {fips: County._member_names_[int(i)] for fips, i in zip(known, indices)}
    return found


def _policyengine_us() -> Any:
    try:
        import policyengine_us
    except ModuleNotFoundError as error:
        if error.name != "policyengine_us":
            raise
        raise ValueError(NOT_INSTALLED) from None
    return policyengine_us


def package_version() -> str:
    """The installed ``policyengine-us`` version."""
    from importlib import metadata

    return metadata.version("policyengine-us")


def _entities(variables: Mapping[str, Any]) -> dict[str, str]:
    return {name: variable.entity.key for name, variable in variables.items()}
