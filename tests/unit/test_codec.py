"""SpanResult <-> plain data (shared.spanning.codec)."""

from __future__ import annotations

import json

from pydicom import Dataset

from shared.dicom.dicom_json import dataset_to_json
from shared.spanning.codec import result_from_dict, result_to_dict
from shared.spanning.model import Match, SourceOutcome, SourceStatus, SpanResult, SpanStatus


def test_a_result_survives_a_json_round_trip():
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Müller^Jürgen"
    ds.StudyInstanceUID = "1.2.3"
    ds.ModalitiesInStudy = ["CT", "MR"]
    ds.RetrieveAETitle = ["PACSA", "PACSB"]
    result = SpanResult(
        query_id="q1", status=SpanStatus.PARTIAL,
        matches=(Match(dataset=ds, key=("1.2.3",), sources=("A", "B")),),
        outcomes=(SourceOutcome("A", SourceStatus.OK, 1, 12.5, 0, None, False),
                  SourceOutcome("C", SourceStatus.TIMEOUT, 0, 3000.0, 2, "query deadline (3s) exceeded", True)),
        raw_count=2, duration_ms=3001.2, error=None)
    back = result_from_dict(json.loads(json.dumps(result_to_dict(result))))
    assert back.outcomes == result.outcomes
    assert (back.query_id, back.status, back.raw_count, back.duration_ms) == ("q1", SpanStatus.PARTIAL, 2, 3001.2)
    (match,) = back.matches
    assert (match.key, match.sources) == (("1.2.3",), ("A", "B"))
    assert dataset_to_json(match.dataset) == dataset_to_json(ds)
    assert str(match.dataset.PatientName) == "Müller^Jürgen"
