"""The Kubernetes deployment, validated without a cluster: the Helm values against the schemas of
the components they configure (dagster-k8s's run launcher, the instance's concurrency, the
Kubernetes API models), the GPU steps' pod requests as dagster-k8s builds them, the executor
switch, the shared volume, and the multi-node training Job, whose pods' command is run here as
two nodes meeting on loopback."""

import json
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config_schema
from dagster_k8s import K8sRunLauncher, k8s_job_executor
from dagster_k8s.job import (
    DagsterK8sJobConfig,
    construct_dagster_k8s_job,
    get_user_defined_k8s_config,
)
from dagster_k8s.models import k8s_model_from_dict, k8s_snake_case_dict
from kubernetes import client as k8s
from test_training import BOS, EOS, counting_corpus

from fi_assets.definitions import build_definitions
from fi_resources.cluster import (
    GPU_RESOURCE,
    job_name,
    trainer_command,
    training_job_manifests,
)
from fi_resources.settings import Settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
VALUES = yaml.safe_load((DEPLOY / "values.yaml").read_text())
GPU_ASSETS = {
    "instruction_templates",
    "template_index",
    "document_chunks",
    "matched_pairs",
    "instantiated_pairs",
    "judged_pairs",
    "continuations",
    "trained_checkpoint",
    "eval_scores",
}


def k8s_model(model_class, manifest: dict):
    """The Kubernetes API model of a manifest; unknown or mistyped fields raise."""
    return k8s_model_from_dict(model_class, k8s_snake_case_dict(model_class, manifest))


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _assert_valid(config_type, value) -> None:
    result = process_config(config_type, value)
    assert result.success, [error.message for error in result.errors]


def test_the_user_deployment_has_what_the_chart_requires_and_only_known_settings():
    (deployment,) = VALUES["dagster-user-deployments"]["deployments"]
    assert {"name", "image", "port"} <= set(deployment)
    assert {"repository", "pullPolicy"} <= set(deployment["image"])
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "fi_assets.definitions"]
    for env in deployment["env"]:
        k8s_model(k8s.V1EnvVar, env)
        if env["name"].startswith("FI_"):  # a misspelt setting would be silently ignored
            assert env["name"][3:].lower() in Settings.model_fields, env["name"]
    assert (
        Settings(
            **{
                e["name"][3:].lower(): e["value"]
                for e in deployment["env"]
                if e["name"].startswith("FI_")
            }
        ).executor
        == "k8s"
    )
    for volume in deployment["volumes"]:
        k8s_model(k8s.V1Volume, volume)
    for mount in deployment["volumeMounts"]:
        k8s_model(k8s.V1VolumeMount, mount)
    k8s_model(k8s.V1ResourceRequirements, deployment["resources"])
    claims = {v["persistentVolumeClaim"]["claimName"] for v in deployment["volumes"]}
    assert claims == {"fi-home"}
    assert {m["mountPath"] for m in deployment["volumeMounts"]} == {
        e["value"] for e in deployment["env"] if e["name"] == "FI_HOME"
    }


def test_the_run_launcher_values_are_a_valid_k8s_run_launcher_config():
    launcher = VALUES["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    helm = launcher["config"]["k8sRunLauncher"]
    # The keys the chart's schema requires, translated as the chart's template does.
    required = ("imagePullPolicy", "loadInclusterConfig", "envConfigMaps", "envSecrets")
    assert set(required + ("envVars", "volumes", "volumeMounts")) <= set(helm)
    config = {
        "instance_config_map": "fi-dagster-instance",
        "image_pull_policy": helm["imagePullPolicy"],
        "load_incluster_config": helm["loadInclusterConfig"],
        "env_config_maps": [item["name"] for item in helm["envConfigMaps"]],
        "env_secrets": [item["name"] for item in helm["envSecrets"]],
        "env_vars": helm["envVars"],
        "volumes": helm["volumes"],
        "volume_mounts": helm["volumeMounts"],
        "run_k8s_config": {_snake(k): v for k, v in helm["runK8sConfig"].items()},
    }
    _assert_valid(K8sRunLauncher.config_type(), config)
    run_config = config["run_k8s_config"]
    k8s_model(k8s.V1ResourceRequirements, run_config["container_config"]["resources"])
    k8s_model(k8s.V1JobSpec, {**run_config["job_spec_config"], "template": {}})


def test_the_instance_values_are_a_valid_instance_config():
    concurrency = VALUES["concurrency"]
    assert concurrency["enabled"]
    instance = {
        "concurrency": {
            "pools": {_snake(k): v for k, v in concurrency["pools"].items()},
            "runs": {_snake(k): v for k, v in concurrency["runs"].items()},
        },
        "run_monitoring": {
            _snake(k): v for k, v in VALUES["dagsterDaemon"]["runMonitoring"].items()
        },
        "telemetry": VALUES["telemetry"],
    }
    _assert_valid(dagster_instance_config_schema(), instance)
    postgres = VALUES["postgresql"]
    assert not postgres["enabled"] and postgres["postgresqlHost"] and postgres["service"]["port"]
    assert VALUES["dagsterWebserver"]["replicaCount"] >= 1


def test_the_shared_volume_is_a_read_write_many_claim():
    claim = yaml.safe_load((DEPLOY / "fi-home.yaml").read_text())
    model = k8s_model(k8s.V1PersistentVolumeClaim, claim)
    assert model.spec.access_modes == ["ReadWriteMany"] and model.metadata.name == "fi-home"


@pytest.fixture(scope="module")
def k8s_definitions():
    return build_definitions(Settings(executor="k8s", trainer_gpus_per_node=8))


def test_the_k8s_executor_runs_steps_in_pods_with_gpu_requests(k8s_definitions):
    job = k8s_definitions.resolve_implicit_global_asset_job_def()
    assert job.executor_def is k8s_job_executor
    _assert_valid(k8s_job_executor.config_schema.config_type, {"max_concurrent": 8})
    assert build_definitions(Settings()).resolve_implicit_global_asset_job_def().executor_def in (
        None,
        dg.multi_or_in_process_executor,
    )
    job_config = DagsterK8sJobConfig(job_image="registry.example.org/fi:1", dagster_home="/opt")
    requested = {}
    for asset in k8s_definitions.assets:
        if not isinstance(asset, dg.AssetsDefinition) or not asset.is_executable:
            continue
        user_config = get_user_defined_k8s_config(asset.op.tags)
        pod = construct_dagster_k8s_job(
            job_config, ["dagster", "api", "execute_step"], "step", user_config, "step-pod"
        )
        limits = pod.spec.template.spec.containers[0].resources
        gpus = (limits.limits or {}).get(GPU_RESOURCE) if limits else None
        requested[asset.key.to_user_string()] = gpus
        if gpus:  # a GPU pod also tolerates the GPU nodes' taint
            assert pod.spec.template.spec.tolerations[0].key == GPU_RESOURCE
            assert asset.op.pool == "gpu"
    assert {name for name, gpus in requested.items() if gpus} == GPU_ASSETS
    assert requested["trained_checkpoint"] == "8" and requested["judged_pairs"] == "1"
    assert requested["packed_corpus"] is None


def test_a_multi_node_trainer_step_asks_for_no_gpu_and_owners_show_per_group():
    defs = build_definitions(
        Settings(trainer_nodes=4, trainer_gpus_per_node=8, owners={"training": ["ada@lab.org"]})
    )
    graph = defs.resolve_asset_graph()
    node = graph.get(dg.AssetKey("trained_checkpoint"))
    assert node.owners == ["ada@lab.org"]
    assert graph.get(dg.AssetKey("judged_pairs")).owners == ["team:data"]
    (asset,) = [a for a in defs.assets if getattr(a, "key", None) == node.key]
    assert get_user_defined_k8s_config(asset.op.tags).container_config == {}


def _manifests(train_args: list[str], nodes: int = 2):
    name = job_name("non_instructional", "6f1c2a9e-1111-2222-3333-444455556666")
    return name, training_job_manifests(
        name,
        "fi",
        "registry.example.org/fineinstructions:0.1.0",
        train_args,
        nodes=nodes,
        gpus_per_node=1,
        env={"FI_HOME": "/fi_home", "DAGSTER_PIPES_CONTEXT": "e30="},
        fi_home="/fi_home",
        fi_home_claim="fi-home",
    )


def test_the_training_job_is_an_indexed_job_with_a_headless_service():
    name, (service, job) = _manifests(["--data", "/fi_home/x"], nodes=4)
    assert name == "fi-train-non-instructional-6f1c2a9e" and len(name) <= 63
    service_model, job_model = k8s_model(k8s.V1Service, service), k8s_model(k8s.V1Job, job)
    assert service_model.spec.cluster_ip == "None"
    assert service_model.spec.selector == {"job-name": name}
    spec = job_model.spec
    assert (spec.completion_mode, spec.completions, spec.parallelism) == ("Indexed", 4, 4)
    pod = spec.template.spec
    assert pod.subdomain == name and pod.restart_policy == "Never"
    (container,) = pod.containers
    assert container.resources.limits == {GPU_RESOURCE: "1"}
    command = container.command
    assert command[command.index("--nnodes") + 1] == "4"
    assert command[command.index("--node_rank") + 1] == "$(NODE_RANK)"
    assert command[command.index("--master_addr") + 1] == f"{name}-0.{name}"
    rank = next(env for env in container.env if env.name == "NODE_RANK")
    assert "job-completion-index" in rank.value_from.field_ref.field_path
    assert {v.name: v.persistent_volume_claim for v in pod.volumes}["fi-home"].claim_name == (
        "fi-home"
    )


def test_single_machine_commands_need_no_rendezvous():
    assert trainer_command(["--steps", "1"], python="py") == [
        "py",
        "-m",
        "training.train",
        "--steps",
        "1",
    ]
    several = trainer_command(["--steps", "1"], 1, 8, python="py")
    assert several[:6] == [
        "py",
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "8",
        "--standalone",
    ]
    with pytest.raises(ValueError, match="node 0"):
        trainer_command([], nodes=2)


def test_the_job_pods_command_trains_as_two_nodes(tmp_path, free_port):
    data = counting_corpus(tmp_path / "data")
    out = tmp_path / "run"
    args = ["--data", str(data), "--out", str(out), "--bos-id", str(BOS), "--eos-id", str(EOS)]
    args += ["--seq-len", "24", "--batch-size", "1", "--steps", "3", "--log-every", "1"]
    name, (_, job) = _manifests(args)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    port = str(free_port)
    # What Kubernetes would run in pod i, on loopback: its rank, node 0's address, a free port.
    substitutes = {"python": sys.executable, f"{name}-0.{name}": "127.0.0.1", "29500": port}
    nodes = []
    for rank in range(2):
        command = [substitutes.get(part, part) for part in container["command"]]
        command = [part.replace("$(NODE_RANK)", str(rank)) for part in command]
        nodes.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [
        err.decode()[-2000:] for _, err in outputs
    ]
    lines = [
        json.loads(line) for line in outputs[0][0].decode().splitlines() if line.startswith("{")
    ]
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert (out / "hf" / "config.json").exists()


def test_the_trainer_launcher_role_is_valid_and_covers_the_jobs_calls():
    role, binding = yaml.safe_load_all((DEPLOY / "trainer-rbac.yaml").read_text())
    role_model = k8s_model(k8s.V1Role, role)
    k8s_model(k8s.V1RoleBinding, binding)
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    granted = {
        (resource, verb)
        for rule in role_model.rules
        for resource in rule.resources
        for verb in rule.verbs
    }
    assert {("jobs", "create"), ("jobs", "delete"), ("services", "create")} <= granted
    assert {("services", "delete"), ("pods", "list")} <= granted


def test_a_cluster_backfills_the_model_assets_one_shard_per_run():
    def policies(settings):
        return {
            asset.key.to_user_string(): asset.backfill_policy.max_partitions_per_run
            for asset in build_definitions(settings).assets
            if isinstance(asset, dg.AssetsDefinition) and asset.backfill_policy
        }

    one_machine = policies(Settings())
    assert one_machine["judged_pairs"] is None and set(one_machine.values()) == {None}
    cluster = policies(Settings(backfill_shards_per_run=1))
    assert cluster.keys() == one_machine.keys() and set(cluster.values()) == {1}


def _pins(lock: Path) -> dict[str, str]:
    """Package -> version of a `uv pip compile` lock."""
    found = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", lock.read_text(), flags=re.MULTILINE)
    return {name.lower().replace("_", "-"): version for name, version in found}


def test_the_gpu_lock_holds_vllm_with_the_core_pins_and_the_image_matches_its_cuda():
    """`make install-gpu` and the deploy image install requirements-gpu.lock: it must hold vLLM
    at a version whose structured-output API the engines use (>= 0.12), every exact pin of the
    project's core dependencies at the same version (a core pin bumped without `make lock`
    fails here), and CUDA libraries of the major the image's base carries."""
    root = DEPLOY.parents[1]
    pins = _pins(root / "requirements-gpu.lock")
    vllm_version = tuple(int(part) for part in pins["vllm"].split(".")[:2])
    assert vllm_version >= (0, 12)
    core = re.search(
        r"^dependencies = \[(.*?)^\]",
        (root / "pyproject.toml").read_text(),
        re.MULTILINE | re.DOTALL,
    )
    exact = dict(re.findall(r'"([A-Za-z0-9_.-]+)==([^"]+)"', core.group(1)))
    assert exact and {name: pins.get(name.lower()) for name in exact} == exact
    cuda_major = pins["nvidia-cuda-runtime"].split(".")[0]
    base = re.search(
        r"^FROM nvidia/cuda:(\d+)\.", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE
    )
    assert base.group(1) == cuda_major
    assert "--constraint requirements-gpu.lock" in (DEPLOY / "Dockerfile").read_text()
