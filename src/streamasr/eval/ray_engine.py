"""`--engine ray`: shard the utterances of `bench wer` over Ray workers.

Each worker is a Ray actor that loads one model directory once and transcribes the utterances it is sent with
the same function as the single-process path (`utterance.transcribe_item`), so per-utterance results are the same;
the driver keeps reading the dataset, writing the per-utterance JSONL (resume works the same) and computing the
summary. Items travel as a path (manifests: the workers must see the same filesystem) or as encoded audio bytes
(hub datasets). Workers run ONNX Runtime with one thread each unless --threads says otherwise, one worker per
cluster CPU by default. On a cluster, every node needs streamasr installed and the model directory at the same
path. The NeMo reference row, if any, runs in the driver.
"""

from __future__ import annotations

from streamasr.errors import StreamASRError
from streamasr.eval.utterance import transcribe_item
from streamasr.runtime import Model


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise StreamASRError("--engine ray needs Ray: pip install 'ray>=2.9' (or streamasr[ray])") from exc
    return ray


class RayEngine:
    def __init__(self, address: str | None = None, workers: int | None = None, threads: int | None = None):
        ray = self.ray = _import_ray()
        self._started = False
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                         configure_logging=True)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                raise StreamASRError(f"cannot start or reach {where}: {exc}") from exc
            self._started = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = max(1, workers or cpus)
        self.threads = threads or 1
        self.batch = 4 * self.workers
        self._pools: dict[str, object] = {}
        self._actors: list = []

    def _pool(self, system):
        if system.label not in self._pools:
            from ray.util import ActorPool

            Worker = self.ray.remote(num_cpus=min(self.threads, 1))(_Worker)  # noqa: N806
            actors = [Worker.remote(system.model_dir, self.threads, system.latency_ms, system.offline)
                      for _ in range(self.workers)]
            self.ray.get([a.ready.remote() for a in actors])  # load errors surface here, once
            self._actors += actors
            self._pools[system.label] = ActorPool(actors)
        return self._pools[system.label]

    def run(self, system, items):
        if system.kind != "onnx":
            return [system.transcribe(it) for it in items]
        pool = self._pool(system)
        return list(pool.map(lambda actor, item: actor.transcribe.remote(item), items))

    def close(self) -> None:
        for actor in self._actors:
            try:
                self.ray.kill(actor)
            except Exception:  # noqa: BLE001 - best effort at shutdown
                pass
        self._actors, self._pools = [], {}
        if self._started:
            self.ray.shutdown()
            self._started = False


class _Worker:
    """One model loaded once per worker process."""

    def __init__(self, model_dir: str, threads: int, latency_ms: int, offline: bool):
        self.model = Model.load_dir(model_dir, threads=threads)
        self.latency_ms, self.offline = latency_ms, offline

    def ready(self) -> bool:
        return True

    def transcribe(self, item) -> dict:
        return transcribe_item(self.model, item, self.latency_ms, self.offline)
