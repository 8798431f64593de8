"""Where a step runs. A GPU step takes a slot of the `gpu` pool (the instance's limit: one at a time
on one machine, as many as there are GPUs on a cluster) and, under the Kubernetes executor
(FI_EXECUTOR=k8s), a pod that asks for that many GPUs on a GPU node. On one machine the
Kubernetes tag is ignored; one place says both, so the same definitions run everywhere."""

from fi_resources.cluster import GPU_RESOURCE, GPU_TOLERATION

GPU_POOL = "gpu"
# The op tag dagster-k8s merges into the step's pod (container resources, pod spec).
K8S_CONFIG_TAG = "dagster-k8s/config"


def k8s_gpu_request(gpus: int) -> dict:
    """The `dagster-k8s/config` tag of a step pod that needs `gpus` GPUs (none for 0)."""
    if gpus <= 0:
        return {}
    return {
        K8S_CONFIG_TAG: {
            "container_config": {"resources": {"limits": {GPU_RESOURCE: str(gpus)}}},
            "pod_spec_config": {"tolerations": [GPU_TOLERATION]},
        }
    }


def on_gpu(gpus: int = 1) -> dict:
    """Keyword arguments of `@dg.asset` for a step that runs on `gpus` GPUs."""
    return {"pool": GPU_POOL, "op_tags": k8s_gpu_request(gpus)}
