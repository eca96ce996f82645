"""The life cycle of a vLLM OpenAI-compatible server, and its development endpoints.

vLLM pins its own torch and transformers, so it runs from its own environment as a server
process and the run talks to it over HTTP. One server serves a whole run: new weights are
loaded between iterations without a restart (`reload_weights`, then the encoder, multimodal
and prefix caches are reset: without that the engine dies or answers with stale log-probs).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from spark_vl.config import VLLMConfig
from spark_vl.runio import free_port, logger, write_text_atomic

CACHE_RESETS = ("/reset_encoder_cache", "/reset_mm_cache", "/reset_prefix_cache")


class RolloutServerError(RuntimeError):
    """The vLLM server could not be started or reached; the message says what to fix."""


class VLLMServer:
    """A vLLM server for one run: started on first use from `model_dir`, restarted when its
    health check fails, stopped by `stop()`. With `config.url` set it is someone else's server,
    and only used. Its pid and log live in `work_dir`, so a run resumed after a crash first
    stops the server the crashed process left behind."""

    def __init__(self, config: VLLMConfig, model_dir: Path, work_dir: Path):
        self.config = config
        self.model_dir = Path(model_dir).resolve()
        self.work_dir = Path(work_dir)
        self.process: subprocess.Popen | None = None
        self.port = config.port
        self.weights: Path | None = None  # the checkpoint the server holds now
        self.sleeping = False
        self.startup_s: float | None = None  # seconds the last start took to become healthy
        self.client = httpx.Client(timeout=httpx.Timeout(config.request_timeout_s, connect=10.0))

    @property
    def url(self) -> str:
        if self.config.url:
            return self.config.url.rstrip("/")
        return f"http://{self.config.host}:{self.port}"

    @property
    def external(self) -> bool:
        return self.config.url is not None

    def command(self) -> list[str]:
        cmd = [self.config.python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
               "--served-model-name", self.config.served_model_name, "--host", self.config.host,
               "--port", str(self.port), "--logprobs-mode", "processed_logprobs", *self.config.args]
        if self.config.sleep_during_train:
            cmd.append("--enable-sleep-mode")
        return cmd

    def healthy(self) -> bool:
        try:
            return self.client.get(f"{self.url}/health", timeout=5.0).status_code == 200
        except httpx.HTTPError:
            return False

    def ensure_running(self) -> None:
        """Start the server, or restart it when it does not answer its health check."""
        if self.healthy():
            return
        if self.external:
            raise RolloutServerError(f"the vLLM server at {self.url} (rollout.vllm.url) does not answer /health: "
                                     "start it, or unset rollout.vllm.url to let the run start one")
        if self.process is not None:
            logger.warning("vLLM server at %s failed its health check: restarting it", self.url)
            self.stop()
        self.start()

    def start(self) -> None:
        self._stop_leftover()
        if not Path(self.config.python).exists():
            raise RolloutServerError(f"rollout.vllm.python {self.config.python} does not exist: build the vLLM "
                                     "environment with `make vllm-env` (docs/scaling.md)")
        self.port = self.config.port or free_port(self.config.host)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.work_dir / "server.log"
        env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", **self.config.env}
        logger.info("starting vLLM server on %s for %s (log: %s)", self.url, self.model_dir, log_path)
        started = time.perf_counter()
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        write_text_atomic(self.work_dir / "server.pid", str(self.process.pid))
        deadline = started + self.config.startup_timeout_s
        while not self.healthy():
            if self.process.poll() is not None:
                raise RolloutServerError(f"the vLLM server exited with code {self.process.returncode} while "
                                         f"starting; the end of {log_path}:\n{_tail(log_path)}")
            if time.perf_counter() > deadline:
                self.stop()
                raise RolloutServerError(f"the vLLM server did not become healthy within "
                                         f"{self.config.startup_timeout_s:.0f} s (rollout.vllm.startup_timeout_s); "
                                         f"the end of {log_path}:\n{_tail(log_path)}")
            time.sleep(0.5)
        self.weights, self.sleeping = self.model_dir, False
        self.startup_s = time.perf_counter() - started
        logger.info("vLLM server healthy after %.1f s", self.startup_s)

    def stop(self) -> None:
        """Stop the server process group (the engine core runs in a child process)."""
        if self.process is not None and self.process.poll() is None:
            _stop_group(self.process.pid)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _stop_group(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
        (self.work_dir / "server.pid").unlink(missing_ok=True)

    def _stop_leftover(self) -> None:
        """Stop a server that a killed earlier process of this run left running."""
        pid_file = self.work_dir / "server.pid"
        if self.external or not pid_file.exists():
            return
        pid = int(pid_file.read_text())
        if not _is_vllm(pid):
            pid_file.unlink(missing_ok=True)
            return
        logger.warning("stopping the vLLM server (pid %d) left running by an earlier process of this run", pid)
        _stop_group(pid)
        for _ in range(60):
            if not _alive(pid):
                break
            time.sleep(0.5)
        else:
            _stop_group(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)

    def post(self, path: str, body: dict | None = None) -> dict:
        response = self.client.post(f"{self.url}{path}", json=body)
        if response.status_code >= 400:
            raise RolloutServerError(f"vLLM {path} answered {response.status_code}: {response.text[:500]}")
        return response.json() if response.content and "json" in response.headers.get("content-type", "") else {}

    def load_weights(self, checkpoint: Path) -> None:
        """Serve the weights of `checkpoint` (a Hugging Face directory of the same architecture)."""
        checkpoint = Path(checkpoint).resolve()
        if checkpoint == self.weights:
            return
        if ties_word_embeddings(checkpoint):
            if self.external:
                raise RolloutServerError(f"{checkpoint} ties its output head to the embeddings: vLLM cannot reload "
                                         "it in place, and a server at rollout.vllm.url cannot be restarted here")
            logger.warning("%s ties its output head to the embeddings, which vLLM's in-place reload leaves at the "
                           "old weights: restarting the server on the new checkpoint instead", checkpoint)
            self.stop()
            self.model_dir = checkpoint
            self.start()
            return
        self.post("/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": str(checkpoint)}})
        for path in CACHE_RESETS:
            self.post(path)
        self.weights = checkpoint

    def sleep(self) -> None:
        """Release accelerator memory (weights and KV cache) while the policy trains."""
        if not self.sleeping:
            self.post("/sleep?level=2")
            self.weights, self.sleeping = None, True

    def wake_up(self) -> None:
        if self.sleeping:
            self.post("/wake_up")
            self.sleeping = False

    def close(self) -> None:
        if not self.external:
            self.stop()
        self.client.close()


def ties_word_embeddings(checkpoint: Path) -> bool:
    config = json.loads((checkpoint / "config.json").read_text())
    return bool(config.get("tie_word_embeddings") or config.get("text_config", {}).get("tie_word_embeddings"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _is_vllm(pid: int) -> bool:
    try:
        return b"vllm" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return _alive(pid)


def _stop_group(pid: int, sig: int = signal.SIGTERM) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
