"""PACS simulator: a lab tool (tests, benchmarks, demo) answering DIMSE and DICOMweb from a synthetic catalog."""

from services.pacs_sim.catalog import Catalog, generate_catalog, instance_dataset, overlapping_catalogs
from services.pacs_sim.faults import Faults
from services.pacs_sim.simulator import PacsSimulator

__all__ = ["Catalog", "Faults", "PacsSimulator", "generate_catalog", "instance_dataset", "overlapping_catalogs"]
