"""The openai engine against a real OpenAI-compatible server: `transformers serve` with
SmolLM2-135M-Instruct on loopback (what answers is a model). A role end to end through Dagster
with several requests in flight; the server killed in the middle of a step and restarted, after
which only the missing calls are made; an unreachable URL and a gateway answering 401, each a
clear error that leaves nothing half-written; and the API key never stored."""

import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from fi_assets.definitions import build_definitions
from fi_assets.ingestion import ingest_shards
from fi_resources import tables
from fi_resources.engines import ServerError
from fi_resources.model_calls import open_model_call_cache
from fi_resources.roles import Genericizer
from fi_resources.settings import get_settings
from fi_resources.storage import Storage

pytestmark = pytest.mark.slow

QUERIES = [
    "What did Nikola Tesla invent in 1891?",
    "How do I bake sourdough bread at home?",
    "Who painted the ceiling of the Sistine Chapel?",
    "What is the boiling point of water on Mount Everest?",
    "How does a heat pump work in winter?",
    "Why did the Roman Empire fall?",
]
SECRET = "sk-test-0123456789abcdef"


class Gateway(ThreadingHTTPServer):
    """A pass-through in front of a real server that keeps every request body it forwards, and
    with a `key`, checks it as hosted APIs and `vllm serve --api-key` do: a request without the
    right bearer key gets 401."""

    def __init__(self, upstream: str, key: str | None = None):
        super().__init__(("127.0.0.1", 0), _GatewayHandler)
        self.upstream, self.key = upstream.removesuffix("/v1"), key
        self.bodies: list[dict] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _GatewayHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.bodies.append(json.loads(body))
        key = self.server.key
        if key is not None and self.headers.get("Authorization") != f"Bearer {key}":
            error = {"message": "Incorrect API key provided", "code": "invalid_api_key"}
            self._answer(401, json.dumps({"error": error}).encode())
            return
        forwarded = urllib.request.Request(
            self.server.upstream + self.path, body, {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(forwarded, timeout=300) as answer:
                self._answer(answer.status, answer.read())
        except urllib.error.HTTPError as error:
            self._answer(error.code, error.read())
        except (urllib.error.URLError, ConnectionError) as error:
            # What a proxy in front of a dead server answers.
            self._answer(502, json.dumps({"error": {"message": str(error)}}).encode())


def write_queries(path, queries):
    path.write_text("".join(json.dumps({"query": q}) + "\n" for q in queries))
    return path


def materialize_templates(instance, storage, queries_file, shard):
    """Ingest a query shard and materialize its templates with the current settings."""
    defs = build_definitions(get_settings())
    [ingested] = ingest_shards(storage, "queries", str(queries_file), shard)
    instance.add_dynamic_partitions("query_shards", [shard])
    instance.report_runless_asset_event(ingested.event)
    return dg.materialize(
        list(defs.assets),
        selection=["raw_queries", "instruction_templates"],
        partition_key=shard,
        instance=instance,
        resources=defs.resources,
        raise_on_error=False,
    )


def step_failure(result) -> str:
    """The error of the run's failed step, with its cause (the engine's message)."""
    event = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    return event.event_specific_data.error.to_string()


def use_server(monkeypatch, url, **settings):
    monkeypatch.setenv("FI_GENERICIZER_ENGINE", "openai")
    monkeypatch.setenv("FI_OPENAI_BASE_URL", url)
    for name, value in settings.items():
        monkeypatch.setenv(f"FI_{name.upper()}", str(value))
    get_settings.cache_clear()


def test_a_role_end_to_end_through_a_real_server(fi_home, tmp_path, monkeypatch, model_server):
    use_server(
        monkeypatch,
        model_server.url,
        genericizer_model=model_server.model,
        openai_max_concurrency=4,
        max_new_tokens=32,
        openai_api_key=SECRET,
    )
    storage = Storage(home=str(fi_home))
    queries = write_queries(tmp_path / "q.jsonl", QUERIES[:4])
    with dg.instance_for_test() as instance:
        result = materialize_templates(instance, storage, queries, "q1")
        assert result.success
        metadata = result.asset_materializations_for_node("instruction_templates")[0].metadata
        assert metadata["model_calls_made"].value == 4
        assert metadata["model_prompt_tokens"].value > 4 * 50
        assert 4 <= metadata["model_completion_tokens"].value <= 4 * 32
        # Every answer is a template or a reject with its reason (48 tokens cut many JSONs).
        templates = storage.read_table(tables.INSTRUCTION_TEMPLATES, "q1")
        rejects = storage.read_rejects("instruction_templates", "q1")
        assert templates.height + rejects.height == 4
        assert all(rejects["reason"])
        calls = open_model_call_cache(fi_home).frame()
        assert calls.height == 4 and set(calls["engine"]) == {"openai"}
        assert calls["completion_tokens"].min() > 0
        # The key came from the environment and went nowhere else.
        logs = "".join(str(e) for e in instance.all_logs(result.run_id))
        assert SECRET not in logs and SECRET not in str(dict(metadata))
        assert SECRET.encode() not in (fi_home / "model_calls.sqlite").read_bytes()
        # A second run sends nothing: every call comes from the cache.
        again = materialize_templates(instance, storage, queries, "q1")
        metadata = again.asset_materializations_for_node("instruction_templates")[0].metadata
        assert metadata["model_calls_made"].value == 0
        assert metadata["model_calls_cached"].value == 4


def test_a_query_too_long_for_the_servers_window_is_one_reject(
    fi_home, tmp_path, monkeypatch, llama_cpp_server
):
    """llama.cpp with a 1,024-token window answers a prompt over it with HTTP 400
    context_length_exceeded, as vLLM and OpenAI do. That query alone is rejected as prompt_too_long,
    with the server's words; its neighbours are answered, the step succeeds, and the refusal is
    not cached (a server with a larger window answers it on a rerun). Before, the 400 failed the
    whole step."""
    url, model = llama_cpp_server
    # llama-cpp-python's server takes no `json_schema` response format.
    use_server(
        monkeypatch, url, genericizer_model=model, max_new_tokens=32, openai_structured="off"
    )
    storage = Storage(home=str(fi_home))
    long_query = "Summarise the history of " + ", ".join(
        f"the {word} guild of medieval {town}"
        for word in ("weavers'", "masons'", "bakers'", "tanners'", "dyers'", "coopers'")
        for town in ("Ghent", "Bruges", "Ypres", "Lille", "Arras", "Tournai", "Douai", "Mons")
        for _ in range(2)
    )
    assert 3_000 < len(long_query) < 4_000  # raw_queries keeps queries up to 4,000 characters
    queries = write_queries(tmp_path / "q.jsonl", [QUERIES[0], long_query, QUERIES[1]])
    with dg.instance_for_test() as instance:
        result = materialize_templates(instance, storage, queries, "q1")
        assert result.success
        metadata = result.asset_materializations_for_node("instruction_templates")[0].metadata
        assert metadata["model_calls_made"].value == 2
        assert metadata["model_calls_too_long"].value == 1
    rejects = storage.read_rejects("instruction_templates", "q1")
    too_long = rejects.filter(rejects["reason"] == "prompt_too_long")
    assert too_long.height == 1 and "maximum context length is 1024" in too_long["detail"][0]
    templates = storage.read_table(tables.INSTRUCTION_TEMPLATES, "q1")
    assert templates.height + rejects.height == 3
    assert open_model_call_cache(fi_home).frame().height == 2


def kill_after_two_answers(server, cache) -> threading.Thread:
    """A started thread that kills `server` once the call cache holds two answers."""

    def kill():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and cache.frame().height < 2:
            time.sleep(0.2)
        server.kill()

    killer = threading.Thread(target=kill)
    killer.start()
    return killer


def test_a_killed_server_loses_nothing_answered(fi_home, own_model_server):
    genericizer = Genericizer(
        engine="openai",
        model=own_model_server.model,
        home=str(fi_home),
        max_new_tokens=16,
        openai_base_url=own_model_server.url,
        openai_max_concurrency=2,
        openai_max_retries=1,
        # Long enough that a slow answer on a busy machine is not what ends the call: the kill is.
        openai_timeout_s=300,
    )
    items = [{"query": q} for q in QUERIES[:5]]
    cache = open_model_call_cache(fi_home)
    killer = kill_after_two_answers(own_model_server, cache)
    with pytest.raises(ServerError, match=f"cannot reach {own_model_server.url}"):
        genericizer.call(items)
    killer.join()
    answered = cache.frame().height
    assert 2 <= answered < len(items)

    own_model_server.start()
    resumed = genericizer.call(items)
    assert (resumed.made, resumed.cached) == (len(items) - answered, answered)
    assert cache.frame().height == len(items)
    assert all(isinstance(output, str) for output in resumed.outputs)


def test_an_unreachable_server_fails_clearly_and_writes_nothing(
    fi_home, tmp_path, monkeypatch, free_port
):
    url = f"http://127.0.0.1:{free_port}/v1"
    use_server(monkeypatch, url, openai_max_retries=1)
    storage = Storage(home=str(fi_home))
    queries = write_queries(tmp_path / "q.jsonl", QUERIES[:2])
    with dg.instance_for_test() as instance:
        result = materialize_templates(instance, storage, queries, "q1")
        assert not result.success
        failure = step_failure(result)
        assert f"cannot reach {url}" in failure and "FI_OPENAI_BASE_URL" in failure
    assert not storage.table_path(tables.INSTRUCTION_TEMPLATES, "q1").exists()
    assert open_model_call_cache(fi_home).frame().height == 0


def test_a_401_names_the_key_setting_and_writes_nothing(
    fi_home, tmp_path, monkeypatch, model_server
):
    gateway = Gateway(model_server.url, key=SECRET)
    try:
        use_server(
            monkeypatch,
            gateway.url,
            genericizer_model=model_server.model,
            openai_api_key="sk-wrong",
            max_new_tokens=16,
        )
        storage = Storage(home=str(fi_home))
        queries = write_queries(tmp_path / "q.jsonl", QUERIES[:1])
        with dg.instance_for_test() as instance:
            result = materialize_templates(instance, storage, queries, "q1")
            assert not result.success
            failure = step_failure(result)
            assert f"{gateway.url} answered HTTP 401" in failure
            assert "FI_OPENAI_API_KEY" in failure and "sk-wrong" not in failure
            assert not storage.table_path(tables.INSTRUCTION_TEMPLATES, "q1").exists()
            assert open_model_call_cache(fi_home).frame().height == 0

            # With the right key the same gateway lets the request through to the model.
            use_server(monkeypatch, gateway.url, openai_api_key=SECRET)
            assert materialize_templates(instance, storage, queries, "q1").success
            assert open_model_call_cache(fi_home).frame().height == 1
    finally:
        gateway.shutdown()


def test_vllm_mode_names_the_schema_as_vllm_reads_it(fi_home, tmp_path, monkeypatch, model_server):
    """FI_OPENAI_STRUCTURED=vllm puts the genericizer's JSON schema in `structured_outputs.json`,
    the field vLLM's server reads (its StructuredOutputsParams: `json`, `regex`, ...; an unknown
    key such as `json_schema` is dropped, and the request refused for having no constraint).
    `transformers serve` has no such field, refuses it, and the step says so."""
    gateway = Gateway(model_server.url)
    try:
        use_server(
            monkeypatch,
            gateway.url,
            genericizer_model=model_server.model,
            openai_structured="vllm",
            openai_max_retries=0,
            max_new_tokens=16,
        )
        storage = Storage(home=str(fi_home))
        queries = write_queries(tmp_path / "q.jsonl", QUERIES[:1])
        with dg.instance_for_test() as instance:
            result = materialize_templates(instance, storage, queries, "q1")
        (body,) = gateway.bodies
        # Compact JSON, the grammar the transformers engine compiles (no free whitespace).
        assert set(body["structured_outputs"]) == {"json", "disable_any_whitespace"}
        assert body["structured_outputs"]["disable_any_whitespace"] is True
        schema = body["structured_outputs"]["json"]
        assert schema["type"] == "object" and "template" in schema["properties"]
        assert "response_format" not in body
        assert not result.success and "structured_outputs" in step_failure(result)
    finally:
        gateway.shutdown()


def test_a_fleet_survives_a_dead_server(fi_home, model_server, own_model_server):
    """Two real servers, each behind a pass-through that counts what it forwards; one dies
    after answering twice. Its requests go to the other: the step finishes, every answer is in
    the cache once, and the dead server is left out of the rotation instead of being asked each
    time."""
    dying, living = Gateway(own_model_server.url), Gateway(model_server.url)
    try:
        genericizer = Genericizer(
            engine="openai",
            model=own_model_server.model,
            home=str(fi_home),
            max_new_tokens=16,
            openai_base_url=f"{dying.url},{living.url}",
            openai_max_concurrency=2,
            openai_max_retries=1,
            openai_timeout_s=300,
        )
        items = [{"query": q} for q in QUERIES]
        cache = open_model_call_cache(fi_home)
        killer = kill_after_two_answers(own_model_server, cache)
        started = time.monotonic()
        result = genericizer.call(items)
        seconds = time.monotonic() - started
        killer.join()
        assert (result.made, result.cached) == (len(items), 0)
        assert all(isinstance(output, str) for output in result.outputs)
        assert cache.frame().height == len(items)
        # Every request reached the living server, or the dying one before it died; the dying
        # one was asked at most once more per request in flight (and its retry) after that.
        assert len(living.bodies) >= len(items) - 2
        assert len(dying.bodies) <= len(items) // 2 + 2 * 2
        print(
            f"fleet: {len(dying.bodies)} requests to the dying server, {len(living.bodies)} to "
            f"the living one, {cache.frame().height} answers cached, {seconds:.1f} s"
        )
    finally:
        dying.shutdown()
        living.shutdown()


def test_doctor_asks_a_real_server_for_the_model(fi_home, monkeypatch, model_server):
    """`fi doctor` lists the server's models: the served one passes, another name fails with the
    names the server does serve."""
    from typer.testing import CliRunner

    from fi_assets.cli import app

    use_server(monkeypatch, model_server.url, genericizer_model=model_server.model)
    served = CliRunner().invoke(app, ["doctor"])
    assert served.exit_code == 0, served.output
    assert f"ok   genericizer at {model_server.url}: serves {model_server.model}" in served.output

    use_server(monkeypatch, model_server.url, genericizer_model="Qwen/Qwen2.5-7B-Instruct")
    other = CliRunner().invoke(app, ["doctor"])
    assert other.exit_code == 1
    assert (
        f"FAIL genericizer at {model_server.url}: does not serve 'Qwen/Qwen2.5-7B-Instruct' "
        f"(it serves: {model_server.model}" in other.output
    )
