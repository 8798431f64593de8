"""How GPU work is placed and the trainer launched: one process, torchrun on one machine, or a
multi-node torchrun Job on Kubernetes. The Job is an Indexed Job, one pod per node; a headless Service gives pod 0 the
stable name every node meets at (`<job>-0.<job>`), and each pod's node rank is its completion
index. FI_HOME is the same ReadWriteMany claim the step pods mount, so every node reads the packed
corpus and writes its checkpoint shards where the asset expects them."""

from __future__ import annotations

import re
import sys

# The device plugin's resource, and the taint GPU node pools commonly carry.
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
MASTER_PORT = 29500
NODE_RANK = "NODE_RANK"


def trainer_command(
    train_args: list[str],
    nodes: int = 1,
    gpus_per_node: int = 1,
    master_addr: str | None = None,
    python: str = sys.executable,
) -> list[str]:
    """The command of one node: `python -m training.train ARGS` for a single process, torchrun
    for several; with `nodes` > 1 the node rank is read from $NODE_RANK (Kubernetes expands it)."""
    if nodes == 1 and gpus_per_node == 1:
        return [python, "-m", "training.train", *train_args]
    launcher = [python, "-m", "torch.distributed.run", "--nproc_per_node", str(gpus_per_node)]
    if nodes == 1:
        launcher.append("--standalone")
    else:
        if master_addr is None:
            raise ValueError("a multi-node run needs the address of node 0")
        launcher += ["--nnodes", str(nodes), "--node_rank", f"$({NODE_RANK})"]
        launcher += ["--master_addr", master_addr, "--master_port", str(MASTER_PORT)]
    return [*launcher, "-m", "training.train", *train_args]


def job_name(recipe: str, run_id: str) -> str:
    """A DNS-1123 name for one training run's Job and Service (at most 63 characters)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", recipe.lower()).strip("-")[:40]
    return f"fi-train-{slug}-{run_id[:8]}"


def training_job_manifests(
    name: str,
    namespace: str,
    image: str,
    train_args: list[str],
    nodes: int,
    gpus_per_node: int,
    env: dict[str, str],
    fi_home: str,
    fi_home_claim: str,
) -> tuple[dict, dict]:
    """(headless Service, Indexed Job) of a `nodes` x `gpus_per_node` training run."""
    labels = {"app.kubernetes.io/name": "fi-trainer", "app.kubernetes.io/instance": name}
    metadata = {"name": name, "namespace": namespace, "labels": labels}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "clusterIP": "None",
            # Node 0 must resolve before it is Ready: the rendezvous is how it gets there.
            "publishNotReadyAddresses": True,
            "selector": {"job-name": name},
            "ports": [{"name": "rendezvous", "port": MASTER_PORT}],
        },
    }
    command = trainer_command(train_args, nodes, gpus_per_node, f"{name}-0.{name}", "python")
    container = {
        "name": "trainer",
        "image": image,
        "command": command,
        "env": [{"name": key, "value": value} for key, value in sorted(env.items())]
        + [
            {
                "name": NODE_RANK,
                "valueFrom": {
                    "fieldRef": {
                        "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"
                    }
                },
            }
        ],
        "ports": [{"containerPort": MASTER_PORT, "name": "rendezvous"}],
        "resources": {"limits": {GPU_RESOURCE: str(gpus_per_node)}},
        "volumeMounts": [
            {"name": "fi-home", "mountPath": fi_home},
            # NCCL and the data loader share memory between a node's processes.
            {"name": "shm", "mountPath": "/dev/shm"},
        ],
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "completionMode": "Indexed",
            "completions": nodes,
            "parallelism": nodes,
            # A lost node fails the run; the trainer resumes from its last checkpoint on rerun.
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "subdomain": name,
                    "restartPolicy": "Never",
                    "containers": [container],
                    "volumes": [
                        {"name": "fi-home", "persistentVolumeClaim": {"claimName": fi_home_claim}},
                        {"name": "shm", "emptyDir": {"medium": "Memory"}},
                    ],
                    "tolerations": [GPU_TOLERATION],
                },
            },
        },
    }
    return service, job


def run_training_job(service: dict, job: dict, wait_for_success) -> None:
    """Create the Service and the Job, wait with `wait_for_success(client, name, namespace)`,
    and delete both whatever happens (a cancelled run must not leave GPUs held)."""
    import kubernetes
    from dagster_k8s.client import DagsterKubernetesClient

    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    client = DagsterKubernetesClient.production_client()
    name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]
    client.core_api.create_namespaced_service(namespace, service)
    try:
        client.batch_api.create_namespaced_job(namespace, job)
        wait_for_success(client, name, namespace)
    finally:
        client.delete_job(name, namespace)
        client.core_api.delete_namespaced_service(name, namespace)
