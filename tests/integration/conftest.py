"""A real local Ray for integration tests: more logical CPUs than the machine's cores, on purpose."""

import pytest


@pytest.fixture(scope="session")
def local_ray():
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    ray.shutdown()
