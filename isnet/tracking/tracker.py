"""``Tracker``: one MLflow run, written through MLflow's client API, buffered while the server is away."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags

from isnet.config.load import flatten
from isnet.tracking import buffer
from isnet.tracking.store import (DEFAULT_ARTIFACTS, DEFAULT_URI, _absolute_sqlite, _prepare_local_store, _StoreLock,
                                  git_commit, is_unreachable, package_versions, resolve_tracking_uri, with_lock_retry)
from isnet.tracking_names import (MAX_EXPERIMENT_NAME_LENGTH, MAX_PARAM_LENGTH, MAX_RUN_NAME_LENGTH, clean_name,
                                  clean_value, safe_key, site_keys)

logger = logging.getLogger(__name__)

RETRY_SECONDS = 30.0


class Tracker:
    """A thin layer over MLflow that owns one run; ``enabled=False`` makes every call a no-op (non-zero ranks).

    Logging calls survive an unreachable server by buffering (see the module docstring); ``buffer_path``
    is where (default ``<checkpoint_dir>/<run_id>/tracking_buffer.jsonl`` when the trainer sets it,
    otherwise ``mlflow-buffer/<run_id>.jsonl``)."""

    def __init__(self, experiment: str = "isnet", tracking_uri: str | None = None, enabled: bool = True):
        self.enabled = enabled
        self.uri = resolve_tracking_uri(tracking_uri)
        # a relative SQLite path is fixed now: records sent (or synced) later go to the same file
        self.store_uri = _absolute_sqlite(self.uri)
        self.experiment = clean_name(experiment, MAX_EXPERIMENT_NAME_LENGTH)
        self.run_id: str | None = None
        self.buffer_path: Path | None = None
        self._client: MlflowClient | None = None
        self._buffered = False  # records wait in the buffer: later ones queue behind them (order kept)
        self._retry_at = 0.0
        self._logged: set[tuple[str, int]] | None = None  # (metric, step) already in the run, once resumed

    # -- run life cycle -------------------------------------------------------------------------------
    def start(self, run_id: str | None = None, run_name: str | None = None,
              parent_run_id: str | None = None) -> str | None:
        if not self.enabled:
            return None
        _prepare_local_store(self.uri)
        if run_name is not None:
            run_name = clean_name(run_name, MAX_RUN_NAME_LENGTH) or None
        with _StoreLock(self.store_uri):
            client = MlflowClient(self.store_uri)
            try:
                exp_id = with_lock_retry(lambda: self._experiment_id(client))
            except Exception as exc:
                if is_unreachable(exc):
                    from isnet.errors import UserError

                    raise UserError(f"MLflow tracking server {self.uri} is unreachable; start it (README, "
                                    f"'Scaling out') or unset MLFLOW_TRACKING_URI to use the local store") from None
                raise
            if run_id is not None:  # a resumed run is running again
                with_lock_retry(lambda: client.update_run(run_id, status="RUNNING"))
            else:
                # the tags MLflow's own start_run adds (user, source), and the parent of a nested run
                tags = resolve_tags({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})
                run_id = with_lock_retry(lambda: client.create_run(exp_id, run_name=run_name, tags=tags)).info.run_id
        self._client = client
        self.run_id = run_id
        return self.run_id

    @classmethod
    def attach(cls, run_id: str, experiment: str, tracking_uri: str | None = None,
               buffer_path: str | Path | None = None) -> "Tracker":
        """A Tracker writing to an existing run without starting it (the fluent run is left alone), with
        the same outage buffering; records that run left in ``buffer_path`` are sent first."""
        t = cls(experiment, tracking_uri)
        t.run_id = run_id
        t.buffer_path = Path(buffer_path) if buffer_path else None
        t._client = MlflowClient(t.store_uri)
        t._buffered = t._buffer().is_file()  # queue behind what is still waiting, or send it first
        return t

    def load_logged(self) -> dict[str, str]:
        """For a resumed run: remember every (metric, step) the run already holds, so that what a resumed
        run computes again (an epoch re-run after a crash or a checkpoint fallback, the test evaluation) is
        not sent a second time: MLflow holds each (metric, step) once. Returns the run's tags."""
        if not self.enabled or self.run_id is None:
            return {}
        client = self._client or MlflowClient(self.store_uri)
        logged: set[tuple[str, int]] = set()
        try:
            run = with_lock_retry(lambda: client.get_run(self.run_id))
            for key in run.data.metrics:
                history = with_lock_retry(lambda: client.get_metric_history(self.run_id, key))
                logged.update((key, int(m.step)) for m in history)
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            from isnet.errors import UserError

            raise UserError(f"cannot resume run {self.run_id}: MLflow server {self.uri} became unreachable while "
                            f"reading what the run holds; resume once it answers") from None
        self._logged = logged
        return dict(run.data.tags)

    def _experiment_id(self, client: MlflowClient) -> str:
        exp = client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.uri == DEFAULT_URI:
            DEFAULT_ARTIFACTS.mkdir(parents=True, exist_ok=True)
            location = DEFAULT_ARTIFACTS.resolve().as_uri()
        try:
            return client.create_experiment(self.experiment, artifact_location=location)
        except Exception:  # created by another process in the meantime (a server store has no file lock)
            exp = client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise
            return exp.experiment_id

    @contextlib.contextmanager
    def ending_run(self) -> Iterator[None]:
        """End the run with the status of how the block exits: FINISHED, KILLED on an interrupt (Ctrl-C), FAILED
        on any other exception, which goes on up. The one rule for every command that records a run."""
        try:
            yield
        except KeyboardInterrupt:
            self.end("KILLED")
            raise
        except BaseException:
            self.end("FAILED")
            raise
        self.end("FINISHED")

    def end(self, status: str = "FINISHED") -> None:
        if not self.enabled or self.run_id is None:
            return
        self._record({"op": "terminate", "status": status})
        if self._buffered:
            logger.warning(f"warning: MLflow server {self.uri} still unreachable; run {self.run_id}'s remaining "
                           f"records are kept in {self._buffer()} — send them with "
                           f"`isnet tracking sync {self._buffer()}` once the server is back")

    # -- resilient records ----------------------------------------------------------------------------
    def _buffer(self) -> Path:
        return Path(self.buffer_path) if self.buffer_path else Path("mlflow-buffer") / f"{self.run_id}.jsonl"

    def _record(self, rec: dict[str, Any]) -> None:
        """Send ``rec`` now, or queue it in the buffer while the server is unreachable."""
        rec = {"run_id": self.run_id, "uri": self.store_uri, "timestamp": int(time.time() * 1000), **rec}
        if self._buffered and time.monotonic() >= self._retry_at:
            self.flush()
        if not self._buffered:
            try:
                buffer.send_record(self._client or MlflowClient(self.store_uri), rec)
                return
            except Exception as exc:
                if not is_unreachable(exc):
                    raise
                self._go_offline(exc)
        self._append(rec)

    def _go_offline(self, exc: BaseException) -> None:
        first = not self._buffered
        self._buffered = True
        self._retry_at = time.monotonic() + RETRY_SECONDS
        if first:
            logger.warning(f"warning: MLflow server {self.uri} unreachable ({str(exc)[:160]}); training continues and "
                           f"tracking records are buffered in {self._buffer()} until it answers again")

    def _append(self, rec: dict[str, Any]) -> None:
        path = self._buffer()
        path.parent.mkdir(parents=True, exist_ok=True)
        if rec["op"] == "artifact":  # the file may be temporary (or overwritten later): keep a copy
            files = path.with_suffix(".files")
            dest = files / f"{sum(1 for _ in files.iterdir()) if files.is_dir() else 0:04d}" / Path(rec["path"]).name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(rec["path"], dest)
            rec = {**rec, "path": str(dest.resolve())}
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def flush(self) -> bool:
        """Try to send the buffered records now; True when nothing is left."""
        if not self._buffered:
            return True
        try:
            sent, left = buffer.flush_buffer(self._buffer())
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            self._retry_at = time.monotonic() + RETRY_SECONDS
            return False
        self._buffered = False
        logger.info(f"MLflow server {self.uri} reachable again: {sent} buffered records sent")
        return True

    # -- what every run records ------------------------------------------------------------------------
    def log_run_context(self, config: Mapping[str, Any], manifest_sha256: str, manifest_path: str) -> None:
        if not self.enabled:
            return
        self.log_params(flatten(dict(config)))
        tags = {"manifest_sha256": manifest_sha256, "manifest_path": str(manifest_path), "git_commit": git_commit()}
        tags.update({f"version.{k}": v for k, v in package_versions().items()})
        self.set_tags(tags)
        self.log_dict(dict(config), "config/resolved_config.yaml")

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self.enabled:
            return
        clean = {self._key(k): float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        if self._logged is not None:  # a resumed run: what the run holds already is not sent again
            s = int(step or 0)
            clean = {k: v for k, v in clean.items() if (k, s) not in self._logged}
            self._logged.update((k, s) for k in clean)
        if clean:
            self._record({"op": "metrics", "metrics": clean, "step": step})

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.enabled:
            items = [(self._key(k), clean_value(v, MAX_PARAM_LENGTH)) for k, v in params.items()]
            for i in range(0, len(items), 100):  # MLflow's batch limit
                self._record({"op": "params", "params": dict(items[i:i + 100])})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.enabled:
            self._record({"op": "tags", "tags": {self._key(k): clean_value(v) for k, v in tags.items()}})

    def _key(self, key: str) -> str:
        """Names are built escaped (:mod:`isnet.tracking_names`); one that is not never reaches MLflow as is."""
        safe = safe_key(key)
        if safe != key:
            logger.warning(f"warning: MLflow name {key!r} recorded as {safe!r}")
        return safe

    def log_site_keys(self, sites) -> dict[str, str]:
        """The metric-name key of every site (:func:`isnet.tracking_names.site_keys`), recorded with the real
        names: a tag ``site.<key>`` per site and ``data/site_keys.json``. Returns {site: key}."""
        keys = site_keys(sites)
        if self.enabled and keys:
            self.set_tags({f"site.{k}": name for name, k in keys.items()})
            self.log_dict({"site_keys": keys}, "data/site_keys.json")
        return keys

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self._record({"op": "artifact", "path": str(Path(path).resolve()), "artifact_path": artifact_path})

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        if self.enabled:
            import tempfile

            import yaml

            with tempfile.TemporaryDirectory() as tmp:
                p = Path(tmp) / Path(artifact_file).name
                if p.suffix in (".yaml", ".yml"):
                    p.write_text(yaml.safe_dump(dict(data), sort_keys=False))
                else:
                    p.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
                self.log_artifact(p, str(Path(artifact_file).parent) if Path(artifact_file).parent.name else None)

    def log_figure(self, figure, artifact_file: str) -> None:
        if self.enabled:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                p = Path(tmp) / Path(artifact_file).name
                figure.savefig(p)
                self.log_artifact(p, str(Path(artifact_file).parent) if Path(artifact_file).parent.name else None)

    def log_model(self, model, input_example, name: str = "model") -> bool:
        """Log with an input example (MLflow needs one to export the graph) and explicit requirements, so
        MLflow does not spend minutes inferring them. Skipped while the server is unreachable (the best
        checkpoint is logged as an artifact). True when the model was logged."""
        if not self.enabled:
            return False
        if self._buffered and not self.flush():
            logger.warning("warning: MLflow server unreachable; the model export is skipped (checkpoints/best.pt is "
                           "buffered as an artifact)")
            return False
        import mlflow.pytorch

        reqs = [f"{k}=={v}" for k, v in package_versions().items()
                if k in ("torch", "torchvision") and v != "not installed"]
        # MLflow's model logging works only on its fluent "active run": this run is made active for the call
        # and nothing else (every other record goes through the client); the run's status is set by end()
        mlflow.set_tracking_uri(self.store_uri)
        with mlflow.start_run(run_id=self.run_id, nested=mlflow.active_run() is not None):
            mlflow.pytorch.log_model(model, name=name, pip_requirements=reqs, input_example=input_example)
        return True
