"""Google Cloud Healthcare sources really authenticate: Application Default Credentials from a service-account key
file (GOOGLE_APPLICATION_CREDENTIALS), a JWT bearer grant (RFC 7523) at the key's token endpoint, and the access token
as `Authorization: Bearer` on every QIDO-RS / WADO-RS request to the store (AXIOM_GOOGLE_HEALTHCARE_URL).

Real peers, no mock of the HTTP path: Orthanc B (studies 3, 4, 6) stands behind an authenticating proxy laid out as
the Healthcare API, and a token server verifies each assertion's RS256 signature with the key generated here
(tests/peers/google_healthcare.py). The span client, the retrieve port and the probes are built with no Google
argument, as the services build them, so they take the process's settings (shared.adapters.google_auth).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import httpx
import pytest
from celery import Celery
from fastapi.testclient import TestClient
from pydicom import Dataset

from services.api.app import create_app
from services.listener.app import Listener
from services.worker.tasks import WorkerState
from shared.adapters.google_auth import REFRESH_MARGIN_SECONDS, GoogleTokenProvider, google_healthcare_access
from shared.adapters.probe import probe_sources
from shared.adapters.retrieve_ports import RoutingRetrievePort
from shared.config import ApiSettings, DatabaseSettings, GoogleCloudSettings, Settings, get_settings
from shared.connections import DimseConnection, GoogleHealthcareConnection
from shared.dicom.levels import QueryLevel
from shared.dicom.query_keys import build_identifier
from shared.retrieval.model import RetrieveRequest
from shared.span_client import InProcessSpanClient
from shared.spanning.model import SourceSpec, SourceStatus, SpanPolicy, SpanRequest, SpanStatus
from shared.spanning.ports import CancelToken, QueryFailedError
from tests.integration.api_fixtures import PASSWORDS, SECRET, bearer, database_with_users, provision
from tests.peers import free_port
from tests.peers.google_healthcare import (
    STORE, GoogleTokenServer, HealthcareProxy, pem_of, rsa_key, service_account_key,
)
from tests.peers.streams import drain
from tests.peers.studies import ARCHIVE_B, build_instances, study, study_uid

pytestmark = pytest.mark.integration
KEYS = ["StudyInstanceUID", "PatientID", "StudyDate"]


class Cloud:
    """The token server and the store's proxy (in front of Orthanc B), and the service account's key."""

    def __init__(self, tokens: GoogleTokenServer, proxy: HealthcareProxy, key) -> None:
        self.tokens, self.proxy, self.key = tokens, proxy, key

    def key_file(self, directory: Path) -> Path:
        """A fresh key file (a new path: the process keeps one token provider, one token cache, per path)."""
        return service_account_key(directory / "service-account.json", self.key, self.tokens.token_uri)


@pytest.fixture(scope="module")
def cloud(two_orthancs):
    key = rsa_key()
    with GoogleTokenServer(key) as tokens, HealthcareProxy(two_orthancs.b.dicomweb_url, tokens) as proxy:
        yield Cloud(tokens, proxy, key)


@pytest.fixture(autouse=True)
def nowhere(monkeypatch, tmp_path):
    """The environment names a key file that does not exist and an API root nobody listens on: a component that
    ignored the settings it was given would fail here, never reach anything else (and see tests/conftest.py)."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "ambient-nowhere.json"))
    monkeypatch.setenv("AXIOM_GOOGLE_HEALTHCARE_URL", f"http://127.0.0.1:{free_port()}/v1")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def configure(monkeypatch, cloud, nowhere):
    """Point the process's settings at the proxy and a credentials file, as the services read them (environment);
    the settings cache is dropped before and after."""

    def apply(credentials: Path) -> None:
        monkeypatch.setenv("AXIOM_GOOGLE_HEALTHCARE_URL", cloud.proxy.api_root)
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(credentials))
        get_settings.cache_clear()

    yield apply
    get_settings.cache_clear()


def gcp_source(name: str = "GCP", priority: int = 1) -> SourceSpec:
    project, location, dataset, store = STORE
    return SourceSpec(name, "google_healthcare", GoogleHealthcareConnection(
        project=project, location=location, dataset=dataset, dicom_store=store), priority=priority)


def dimse_source(two_orthancs) -> SourceSpec:
    a = two_orthancs.a
    return SourceSpec("A", "dimse", DimseConnection(ae_title=a.aet, host="127.0.0.1", port=a.dicom_port), priority=2,
                      retrieve_ae_title=a.aet)


def span(client: InProcessSpanClient, sources: list[SourceSpec], keys: list[str] = KEYS):
    request = SpanRequest(level=QueryLevel.STUDY, identifier=build_identifier(keys, QueryLevel.STUDY))
    return client.run(request, sources, SpanPolicy(query_timeout_seconds=20))


def test_a_span_over_a_google_healthcare_store_returns_its_studies_with_one_token(cloud, configure, two_orthancs,
                                                                                   tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    configure(cloud.key_file(tmp_path))
    grants, forwarded = cloud.tokens.grants, cloud.proxy.forwarded
    client = InProcessSpanClient()  # no Google argument: the process's settings, as the services build it
    try:
        results = [span(client, [gcp_source(), dimse_source(two_orthancs)]) for _ in range(4)]
    finally:
        client.close()
    for result in results:
        assert result.status is SpanStatus.COMPLETED, result.outcomes
        counts = {o.source: o.match_count for o in result.outcomes}
        assert counts == {"GCP": len(ARCHIVE_B), "A": len(two_orthancs.studies_a)}
        holders = {m.dataset.StudyInstanceUID: m.sources for m in result.matches}
        assert holders[study_uid(6)] == ("GCP",) and holders[study_uid(3)] == ("GCP", "A")
    assert cloud.tokens.grants - grants == 1, "the token is cached across queries"
    assert cloud.proxy.forwarded - forwarded == 4 and cloud.tokens.refusals == 0
    assert_no_secret_in_logs(cloud, caplog)


def test_wado_rs_retrieve_and_metadata_through_the_store(cloud, configure, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    configure(cloud.key_file(tmp_path))
    source, uid = gcp_source(), study_uid(6)
    identifier = Dataset()
    identifier.StudyInstanceUID = uid
    got: list[Dataset] = []
    with RoutingRetrievePort() as port:  # as RetrievalServices builds it
        progress, outcome = drain(port.get(source, RetrieveRequest(QueryLevel.STUDY, identifier),
                                           lambda ds: got.append(ds) or 0x0000, CancelToken()))
        metadata = port.port_for(source).metadata(source, uid, CancelToken())
    assert outcome.status == 0x0000 and outcome.completed == study(6).instance_count == len(got) == len(progress)
    assert {ds.SOPInstanceUID for ds in got} == {b.SOPInstanceUID for b in build_instances((6,))}
    assert len(metadata) == study(6).instance_count
    assert_no_secret_in_logs(cloud, caplog)


def test_the_token_is_asked_for_again_when_it_expires(cloud, configure, tmp_path):
    configure(cloud.key_file(tmp_path))
    cloud.tokens.expires_in = 3  # refreshed 0.75 s (a quarter of its life) before it expires
    client = InProcessSpanClient()
    try:
        grants = cloud.tokens.grants
        for _ in range(3):
            assert span(client, [gcp_source()]).status is SpanStatus.COMPLETED
        assert cloud.tokens.grants - grants == 1
        time.sleep(3.2)  # the proxy no longer admits the first token
        result = span(client, [gcp_source()])
        assert result.status is SpanStatus.COMPLETED, result.outcomes
        assert cloud.tokens.grants - grants == 2
    finally:
        cloud.tokens.expires_in = 3600
        client.close()


def test_a_failed_early_refresh_keeps_the_live_token_until_it_expires(cloud, tmp_path):
    """Refreshed REFRESH_MARGIN_SECONDS before expiry; when that fails the token in hand still serves, and only an
    expired one makes the failure the source's. The provider's clock is moved instead of waiting an hour."""
    offset = [0.0]
    provider = GoogleTokenProvider(credentials_file=cloud.key_file(tmp_path), clock=lambda: time.time() + offset[0])
    grants = cloud.tokens.grants
    token = provider()
    assert provider() == token and cloud.tokens.grants - grants == 1
    offset[0] = 3600 - REFRESH_MARGIN_SECONDS + 10  # inside the margin: a refresh is due
    cloud.tokens.disabled = True
    try:
        refusals = cloud.tokens.refusals
        assert provider() == token and cloud.tokens.refusals - refusals == 1
        assert provider() == token and cloud.tokens.refusals - refusals == 1  # not asked again at once
        offset[0] = 3600 + 5  # expired
        with pytest.raises(QueryFailedError, match="refused the credentials: invalid_grant.*disabled"):
            provider()
        cloud.tokens.disabled = False
        fresh = provider()
        assert fresh != token and cloud.tokens.grants - grants == 2
    finally:
        cloud.tokens.disabled = False


def test_requests_without_the_token_are_refused_by_the_proxy(cloud, two_orthancs):
    """The proxy really authenticates: a DICOMweb request without a live token is a 401."""
    project, location, dataset, store = STORE
    url = (f"{cloud.proxy.api_root}/projects/{project}/locations/{location}/datasets/{dataset}/dicomStores/{store}"
           "/dicomWeb/studies")
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer ya29.forged"}).status_code == 401


def _not_json(path: Path, cloud: Cloud) -> Path:
    path.write_text("{not json")
    return path


def _bad_key(path: Path, cloud: Cloud) -> Path:
    service_account_key(path, cloud.key, cloud.tokens.token_uri)
    path.write_text(path.read_text().replace(pem_of(cloud.key).splitlines()[3], "AAAA"))
    return path


def _other_key(path: Path, cloud: Cloud) -> Path:
    return service_account_key(path, rsa_key(), cloud.tokens.token_uri)  # a key the token server does not know


def _directory(path: Path, cloud: Cloud) -> Path:
    path.mkdir()
    return path


@pytest.mark.parametrize("make, reason", [
    (None, "the key file does not exist"),
    (_not_json, "the file is not a valid json file"),
    (_bad_key, "Failed to load service account credentials"),
    (_directory, "the key file is not a regular file"),
    (_other_key, "refused the credentials"),
], ids=["missing", "not-json", "bad-key", "unreadable", "refused"])
def test_broken_credentials_fail_that_source_only_with_the_reason(cloud, configure, two_orthancs, tmp_path, caplog,
                                                                  make, reason):
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "service-account.json"
    configure(make(path, cloud) if make else path)
    forwarded = cloud.proxy.forwarded
    client = InProcessSpanClient()
    try:
        result = span(client, [gcp_source(), dimse_source(two_orthancs)])
    finally:
        client.close()
    assert result.status is SpanStatus.PARTIAL
    outcomes = {o.source: o for o in result.outcomes}
    assert outcomes["A"].status is SourceStatus.OK and outcomes["A"].match_count == len(two_orthancs.studies_a)
    failed = outcomes["GCP"]
    assert failed.status is SourceStatus.FAILED and failed.retries == 0  # a configuration error is not retried
    assert "GCP: no Google access token: " in failed.error and reason in failed.error, failed.error
    assert f"GOOGLE_APPLICATION_CREDENTIALS={path}" in failed.error
    assert cloud.proxy.forwarded == forwarded, "no request reached the store"
    assert "BEGIN PRIVATE KEY" not in failed.error
    assert_no_secret_in_logs(cloud, caplog)


def test_an_unreachable_token_endpoint_is_a_transport_error_worth_a_retry(cloud, configure, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/token"
    configure(service_account_key(tmp_path / "service-account.json", cloud.key, dead))
    source = dataclasses.replace(gcp_source(), max_retries=1, retry_backoff_seconds=0.05)
    client = InProcessSpanClient()
    try:
        result = span(client, [source])
    finally:
        client.close()
    (outcome,) = result.outcomes
    assert outcome.status is SourceStatus.FAILED and outcome.retries == 1, outcome
    assert "GCP: no Google access token: the token endpoint cannot be reached" in outcome.error
    assert "Connection refused" in outcome.error


def test_probes_use_the_credentials_and_say_why_not(cloud, configure, tmp_path):
    configure(cloud.key_file(tmp_path))
    (ok,) = probe_sources([gcp_source()], deadline_seconds=20)
    assert ok.reachable and ok.error is None and ok.kind == "google_healthcare"
    configure(tmp_path / "nowhere.json")
    (down,) = probe_sources([gcp_source()], deadline_seconds=20)
    assert not down.reachable and "GCP: no Google access token" in down.error and "does not exist" in down.error


def test_a_deployment_without_google_sources_never_loads_credentials(configure, two_orthancs, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="shared.adapters.google_auth")
    configure(tmp_path / "nowhere.json")
    client = InProcessSpanClient()
    try:
        assert span(client, [dimse_source(two_orthancs)]).status is SpanStatus.COMPLETED
    finally:
        client.close()
    provider = google_healthcare_access().token_provider
    assert provider._credentials is None and provider._load_error is None  # never asked
    assert not [r for r in caplog.records if r.name == "shared.adapters.google_auth"]


def test_the_api_spans_retrieves_and_probes_with_its_settings(cloud, two_orthancs, tmp_path):
    """The API's QIDO-RS, WADO-RS and source test on a config with a Google Cloud Healthcare store; an app whose key
    file is missing answers the QIDO-RS search with a Warning naming the source (never a 500)."""
    url, engine, factory = database_with_users(tmp_path)
    project, location, dataset, store = STORE
    a = two_orthancs.a
    ids = provision(factory, sources={
        "GCP": ("google_healthcare", {"project": project, "location": location, "dataset": dataset,
                                      "dicom_store": store}),
        "A": ("dimse", {"ae_title": a.aet, "host": "127.0.0.1", "port": a.dicom_port}),
    }, configs={"cloud": (["GCP", ("A", 2)], {})})

    def app_with(credentials: Path):
        google = GoogleCloudSettings(AXIOM_GOOGLE_HEALTHCARE_URL=cloud.proxy.api_root,
                                     GOOGLE_APPLICATION_CREDENTIALS=str(credentials))
        return create_app(Settings(db=DatabaseSettings(DATABASE_URL=url), api=ApiSettings(SECRET_KEY=SECRET),
                                   google=google))

    params = {"spanner_config_id": ids["cloud"]}
    try:
        with TestClient(app_with(cloud.key_file(tmp_path))) as client:
            client.headers.update(bearer(client, "root", PASSWORDS["root"]))
            studies = client.get("/api/v1/spanner/qido/studies", params=params)
            assert studies.status_code == 200 and "Warning" not in studies.headers, studies.text
            found = {m["0020000D"]["Value"][0] for m in studies.json()}
            assert found == {study_uid(n) for n in (1, 2, 3, 4, 5, 6)}
            wado = client.get(f"/api/v1/spanner/wado/studies/{study_uid(6)}", params=params)
            assert wado.status_code == 200 and wado.content.count(b"DICM") == study(6).instance_count
            probe = client.post(f"/api/v1/config/spanner/{ids['cloud']}/test").json()
            assert {p["source"]: p["reachable"] for p in probe["sources"]} == {"GCP": True, "A": True}
        with TestClient(app_with(tmp_path / "gone.json")) as client:
            client.headers.update(bearer(client, "root", PASSWORDS["root"]))
            studies = client.get("/api/v1/spanner/qido/studies", params=params)
            assert studies.status_code == 200
            assert {m["0020000D"]["Value"][0] for m in studies.json()} == {study_uid(n) for n in (1, 2, 3, 4, 5)}
            warning = studies.headers["Warning"]
            assert warning.startswith('299 axiom "source GCP ') and "the key file does not exist" in warning
            probe = client.post(f"/api/v1/config/spanner/{ids['cloud']}/test").json()
            gcp = next(p for p in probe["sources"] if p["source"] == "GCP")
            assert not gcp["reachable"] and "no Google access token" in gcp["error"]
    finally:
        engine.dispose()


def test_the_worker_and_the_listener_use_their_own_settings(cloud, two_orthancs, tmp_path):
    """The distributed worker's query ports and the spanning SCP's retrievals take the Google settings they were
    built with (not the environment, which points nowhere here)."""
    google = GoogleCloudSettings(AXIOM_GOOGLE_HEALTHCARE_URL=cloud.proxy.api_root,
                                 GOOGLE_APPLICATION_CREDENTIALS=str(cloud.key_file(tmp_path)))
    settings = Settings(db=DatabaseSettings(DATABASE_URL=f"sqlite:///{tmp_path / 'axiom.db'}"), google=google)
    request = SpanRequest(level=QueryLevel.STUDY, identifier=build_identifier(KEYS, QueryLevel.STUDY))
    worker = WorkerState(Celery("test", set_as_current=False), settings)
    try:
        matches, _ = drain(worker.ports["google_healthcare"].find(request, gcp_source(), CancelToken()))
    finally:
        worker.close()
    assert {m.StudyInstanceUID for m in matches} == {study_uid(n) for n in ARCHIVE_B}
    identifier = Dataset()
    identifier.StudyInstanceUID = study_uid(4)
    listener = Listener(settings, session_factory=lambda: None, span_client=InProcessSpanClient())
    got: list[Dataset] = []
    try:
        _, outcome = drain(listener.retrievals.retrieve_port.get(
            gcp_source(), RetrieveRequest(QueryLevel.STUDY, identifier), lambda ds: got.append(ds) or 0x0000,
            CancelToken()))
    finally:
        listener.retrievals.retrieve_port.close()
        listener.client.close()
    assert outcome.completed == len(got) == study(4).instance_count


def assert_no_secret_in_logs(cloud: Cloud, caplog) -> None:
    """Neither an access token nor the private key appears in any captured record (message or fields)."""
    text = caplog.text + "\n".join(repr(vars(record)) for record in caplog.records)
    for token in list(cloud.tokens.issued):
        assert token not in text
    for line in pem_of(cloud.key).splitlines()[1:-1]:
        assert line not in text
