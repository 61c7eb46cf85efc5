"""``habla-ls demo`` (what ``make demo`` runs): the whole loop, offline, on generated classroom audio.

Every step is the documented command, run as a subprocess with the demo's environment, so the demo
shows exactly what a user would type. Only two things are demo-specific and say so: the sample
recordings (natural Kokoro voices, training voices only, with the Andalusian rules applied to their
phonemes; espeak-ng reading respellings when Kokoro is absent; a quiet student, one live session) and a
*simulated* annotator that types the known sentences into Label Studio in place of a human.

Re-running reuses what exists: the Label Studio data dir (and a server still running), the recordings,
the registered model, the tasks (push never duplicates), the annotations.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import httpx

from habla_ls.demo_result import DEMO_PROJECT, DemoResult, gate_summary, print_result

DEMO_SPEAKERS = ("profesora", "alumna")
DEMO_QUIET_SPEAKERS = ("alumna",)
SIMULATED_ANNOTATOR_NOTE = "SIMULATION: a scripted annotator types the known sentences in place of a human"


def demo_voices(family: str, speakers: tuple[str, ...] = DEMO_SPEAKERS) -> dict[str, str]:
    """Which training voice speaks for each demo speaker (never a held-out one: those judge standard speech)."""
    from synth.voices import training_voices

    pool = training_voices(family)
    return {speaker: pool[i % len(pool)] for i, speaker in enumerate(speakers)}


@dataclass
class DemoOptions:
    work_dir: Path = Path("demo-data")
    ls_port: int = 8080
    backend_port: int = 9090
    sessions: int = 6
    segments_per_session: int = 10
    budget: int = 40  # tasks the simulated annotator corrects
    base_ct2: Path | None = None  # a CTranslate2 Whisper dir to start from; default: the packaged whisper-base
    epochs: float = 3.0
    max_steps: int | None = None
    batch_size: int = 8
    force_promote: bool = False
    keep_servers: bool = True
    sentence_set: str = "classroom"
    extra_train_args: tuple[str, ...] = field(default_factory=tuple)

    @property
    def home(self) -> Path:
        return self.work_dir / "home"

    @property
    def recordings(self) -> Path:
        return self.work_dir / "recordings"

    @property
    def references_path(self) -> Path:
        return self.work_dir / "references.json"

    @property
    def habla_model_dir(self) -> Path:
        """Stands in for Habla's models dir: the served version is delivered here, as `watch` would."""
        return self.work_dir / "habla-models"


class Demo:
    """``label_studio``: an already running server to use (its document root must contain the work dir)."""

    def __init__(self, options: DemoOptions, echo=click.echo, label_studio=None):
        self.o = options
        self.echo = echo
        self.o.work_dir = self.o.work_dir.resolve()
        self.step_no = 0
        self.ls = label_studio
        self.own_ls = label_studio is None
        self.backend: subprocess.Popen | None = None
        self.env: dict[str, str] = {}

    # -- plumbing ------------------------------------------------------------------------------------

    def step(self, title: str) -> None:
        self.step_no += 1
        self.echo(click.style(f"\n[{self.step_no}] {title}", bold=True))

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "habla_ls.cli", *args]
        self.echo(click.style("$ habla-ls " + " ".join(args), fg="cyan"))
        done = subprocess.run(cmd, env=self.env, text=True)
        if check and done.returncode != 0:
            raise click.ClickException(f"`habla-ls {' '.join(args)}` failed (exit {done.returncode})")
        return done

    # -- steps ---------------------------------------------------------------------------------------

    def start_label_studio(self) -> None:
        from sync.ls_server import LabelStudioServer, free_port, open_persistent_server, port_is_free

        data_dir = self.o.work_dir / "label-studio"
        server: LabelStudioServer = open_persistent_server(data_dir, document_root=self.o.work_dir, port=self.o.ls_port)
        state = data_dir / "habla-ls-server.json"
        if state.exists():
            # A server left running by an earlier demo: reuse it if it still answers with our token.
            from sync.ls_client import LabelStudioClient
            from sync.ls_errors import LabelStudioError

            port = json.loads(state.read_text())["port"]
            address = f"http://127.0.0.1:{port}"
            with contextlib.suppress(LabelStudioError), LabelStudioClient(address, server.token, timeout=3, retries=0) as client:
                client.whoami()
                server.port = port
                self.ls = server
                self.echo(f"Label Studio already running at {server.url}")
                return
        if not port_is_free(server.port):
            server.port = free_port()
        self.echo(f"starting Label Studio at {server.url} (first start runs its migrations: ~30 s)")
        server.start()
        self.ls = server

    def make_environment(self) -> None:
        self.env = {
            **os.environ,
            "HABLA_LS_HOME": str(self.o.home),
            "HABLA_RECORDINGS": str(self.o.recordings),
            "LABEL_STUDIO_URL": self.ls.url,
            "LABEL_STUDIO_API_KEY": self.ls.token,
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(self.ls.document_root),
            "HABLA_LS_PROJECT": DEMO_PROJECT,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("HABLA_LS_CONFIG", None)

    def make_recordings(self) -> dict[str, str]:
        if self.o.references_path.exists() and self.o.recordings.is_dir():
            self.echo(f"reusing sample recordings in {self.o.recordings}")
            return json.loads(self.o.references_path.read_text())
        from habla_ls.sample_recordings import write_sample_recordings
        from synth.accent import spelt_as_heard
        from synth.sentences import sentence_set

        sentences = [s.text for s in sentence_set(self.o.sentence_set)]
        needed = self.o.sessions * self.o.segments_per_session
        sentences = (sentences * (needed // max(1, len(sentences)) + 1))[:needed]
        speakers, quiet = DEMO_SPEAKERS, DEMO_QUIET_SPEAKERS
        synthesize, described = self.sample_voices(speakers, quiet)
        self.echo(
            f"writing {self.o.sessions} sessions x {self.o.segments_per_session} segments spoken by {described}; "
            "references keep standard spelling, Habla's live transcript is the spoken respelling; "
            f"the {quiet[0]} is quiet (-20 dB); the last session is still 'recording' (no metadata.json)"
        )
        samples = write_sample_recordings(
            self.o.recordings,
            sentences=sentences,
            sessions=self.o.sessions,
            segments_per_session=self.o.segments_per_session,
            speakers=speakers,
            quiet_speakers=quiet,
            text_rewrite=spelt_as_heard,
            synthesize=synthesize,
            speak_reference=True,
            progress=True,
        )
        references = samples.references
        self.o.references_path.write_text(json.dumps(references, ensure_ascii=False, indent=1))
        return references

    def sample_voices(self, speakers: tuple[str, ...], quiet: tuple[str, ...]):
        """(synthesiser reading the standard spelling, words for the log): Kokoro's natural training voices
        with the Andalusian rules on their phonemes, or espeak-ng reading the respelling when Kokoro is absent."""
        from habla_ls.sample_recordings import espeak_synthesizer, kokoro_synthesizer
        from synth.accent import spelt_as_heard
        from synth.kokoro import INSTALL_HINT, KokoroUnavailable, kokoro_installed
        from synth.voices import ESPEAK, KOKORO

        if kokoro_installed():
            voices = demo_voices(KOKORO, speakers)
            try:
                synthesize = kokoro_synthesizer(speakers, quiet, voices=voices)
            except KokoroUnavailable as exc:
                self.echo(click.style(f"Kokoro does not load ({exc}): falling back to espeak-ng", fg="yellow"))
            else:
                names = ", ".join(f"{speaker} {voice}" for speaker, voice in voices.items())
                return synthesize, f"natural Kokoro voices ({names}) with the Andalusian rules on their phonemes"
        else:
            self.echo(click.style(
                f"Kokoro (the synth extra) is not installed: the sample sessions fall back to espeak-ng, a robotic "
                f"voice ({INSTALL_HINT})", fg="yellow"))
        voices = demo_voices(ESPEAK, speakers)
        espeak = espeak_synthesizer(speakers, quiet, voices=voices)
        # espeak-ng cannot take the accent on phonemes: it reads the Andalusian respelling.
        return (lambda text, speaker: espeak(spelt_as_heard(text), speaker)), (
            "espeak-ng (fallback; robotic) reading Andalusian respellings")

    def register_model(self) -> None:
        if self.o.base_ct2 is None:
            self.cli("models", "bootstrap")
        else:
            from ml_backend.registry import read_current

            if read_current(self.o.home / "models") is None:
                self.cli("models", "import-ct2", str(self.o.base_ct2), "--name", "base", "--no-verify")

    def start_backend(self) -> str:
        url = f"http://127.0.0.1:{self.o.backend_port}"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                self.echo(f"an ML backend already answers at {url}; using it")
                return url
        log_path = self.o.work_dir / "backend.log"
        self.echo(f"$ habla-ls backend serve --port {self.o.backend_port}   (log: {log_path})")
        self.backend = subprocess.Popen(
            [sys.executable, "-m", "habla_ls.cli", "backend", "serve", "--port", str(self.o.backend_port)],
            env=self.env,
            stdout=open(log_path, "ab"),  # noqa: SIM115 - owned by the child
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.backend.poll() is not None:
                raise click.ClickException(f"the ML backend exited (code {self.backend.returncode}); see {log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return url
            time.sleep(0.5)
        raise click.ClickException(f"the ML backend did not answer on {url}; see {log_path}")

    def simulate_annotator(self, references: dict[str, str]) -> int:
        """The top ``budget`` tasks by the round's priority, not yet annotated and with a known reference,
        corrected by :class:`habla_ls.term.ScriptedAnnotator`; how many it corrected."""
        from habla_ls.term import ScriptedAnnotator
        from sync.ls_client import LabelStudioClient

        self.echo(click.style(SIMULATED_ANNOTATOR_NOTE, fg="yellow"))
        with LabelStudioClient(self.ls.url, self.ls.token) as client:
            project = client.find_project(DEMO_PROJECT)
            chosen: list[tuple[int, str]] = []
            for task in client.iter_tasks(int(project["id"]), ordering=["tasks:data.priority"], all_fields=True):
                if len(chosen) >= self.o.budget:
                    break
                if task.get("annotations"):
                    continue
                key = (task.get("data") or {}).get("ext_id")
                if key not in references:
                    continue
                chosen.append((int(task["id"]), key))
            done = len(ScriptedAnnotator(client, references).correct(chosen))
        self.echo(f"simulated annotator corrected {done} task(s), most useful first")
        return done

    def tasks_to_correct(self) -> int:
        """How many tasks the round's view holds now (ranked, not yet annotated)."""
        from habla_ls.round import DEFAULT_VIEW_TITLE
        from sync.ls_client import LabelStudioClient

        with LabelStudioClient(self.ls.url, self.ls.token) as client:
            project_id = int(client.find_project(DEMO_PROJECT)["id"])
            view = next((v for v in client.views(project_id) if (v.get("data") or {}).get("title") == DEFAULT_VIEW_TITLE), None)
            if view is None:
                return 0
            return sum(1 for _ in client.iter_tasks(project_id, view_id=int(view["id"]), include="id"))

    def backend_version(self, url: str) -> str | None:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            return httpx.post(f"{url}/setup", json={"project": "demo"}, timeout=60).json().get("model_version")
        return None

    # -- the run -------------------------------------------------------------------------------------

    def run(self) -> DemoResult:
        from ml_backend.registry import read_card, read_current

        started = time.monotonic()
        self.o.work_dir.mkdir(parents=True, exist_ok=True)
        self.step("Label Studio (local, persistent data dir)")
        if self.own_ls:
            self.start_label_studio()
        self.make_environment()
        try:
            self.step("Sample Habla recordings")
            references = self.make_recordings()
            self.step("Model: the offline multilingual whisper-base (no model hub)")
            self.register_model()
            before = read_current(self.o.home / "models")
            self.step("Push the recordings to Label Studio")
            self.cli("sync", "push")
            self.step("Start the ML backend and connect it to the project")
            backend_url = self.start_backend()
            self.cli("backend", "connect", "--project", DEMO_PROJECT, "--url", backend_url)
            self.step("Active-learning round: rank what a human should correct first")
            self.cli("round", "--budget", str(self.o.budget))
            self.step("Corrections in Label Studio")
            self.simulate_annotator(references)
            self.step("Pull the corrections")
            self.cli("sync", "pull", "--write-habla")
            self.step("Fine-tune (LoRA)")
            train_args = ["train", "--epochs", str(self.o.epochs), "--batch-size", str(self.o.batch_size)]
            if self.o.max_steps:
                train_args += ["--max-steps", str(self.o.max_steps)]
            from ml_backend.registry import list_versions

            existing = set(list_versions(self.o.home / "models"))
            self.cli(*train_args, *self.o.extra_train_args)
            new_versions = sorted(set(list_versions(self.o.home / "models")) - existing)
            if not new_versions:
                raise click.ClickException("training registered no new version")
            candidate = new_versions[-1]
            self.step("Evaluate the new version against the served one")
            self.cli("evaluate", candidate, before)
            self.step("Promote if better")
            promote = ["models", "promote", candidate] + (["--force"] if self.o.force_promote else [])
            self.cli(*promote, check=False)
            after = read_current(self.o.home / "models")
            served = self.backend_version(backend_url)
            self.step("Deliver the served version to Habla (where its WHISPER_MODEL points)")
            self.cli("models", "export", "--habla-dir", str(self.o.habla_model_dir.resolve()))
            # As `watch` does after a promotion: without it the round's view holds only corrected tasks, and
            # the project opens on "No tasks found".
            self.step("Next round: rank what to correct next, with the version now served")
            self.cli("round", "--budget", str(self.o.budget))
            next_tasks = self.tasks_to_correct()
            self.step("Which transcript prefills the labelling page (decided on the corrections)")
            self.cli("status", "--refresh-prefill")

            wer = {}
            for version in dict.fromkeys([before, candidate]):
                card = read_card(self.o.home / "models" / version)
                wer[version] = {"test": card.get("test_wer_normalised"), "regression": card.get("regression_wer")}
            gate_lines, gate_report = gate_summary(self.o.home / "reports", candidate, before)
            from habla_ls.prefill import describe_saved, load

            prefill = load(self.o.home)
            prefilled_by = prefill.prefill if prefill else None
            return DemoResult(
                self.ls.url, self.ls.credentials.username, self.ls.credentials.password, self.ls.token,
                before, after, served, wer, time.monotonic() - started, gate_lines, gate_report, describe_saved(prefill)[0],
                self.o.work_dir, next_tasks, prefilled_by,
            )
        finally:
            if not self.o.keep_servers:
                if self.backend is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.backend.pid, 15)
                    self.backend.wait(20)
                if self.ls is not None and self.own_ls:
                    self.ls.stop()


@click.command("demo")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-data"), show_default=True)
@click.option("--port", "ls_port", type=int, default=8080, show_default=True, help="Label Studio port (a free one if busy).")
@click.option("--backend-port", type=int, default=9090, show_default=True)
@click.option("--budget", type=int, default=40, show_default=True, help="Tasks the simulated annotator corrects.")
@click.option("--epochs", type=float, default=3.0, show_default=True)
@click.option("--stop-servers", is_flag=True, help="Stop Label Studio and the backend at the end.")
def demo_command(work_dir: Path, ls_port: int, backend_port: int, budget: int, epochs: float, stop_servers: bool) -> None:
    """Run the whole loop offline on generated classroom recordings.

    Starts a local Label Studio, writes sample Habla recordings (natural Kokoro voices with an Andalusian
    accent, espeak-ng if Kokoro is absent; a quiet student, a session still recording), registers the
    offline whisper-base, pushes, starts and connects the ML backend, runs an active-learning round, lets
    a SIMULATED annotator correct the top tasks, pulls, fine-tunes with LoRA, evaluates, promotes if
    better, ranks the next round with the version then served, and prints the WERs and the Label Studio
    login so you can look around. Re-running reuses what exists.
    """
    options = DemoOptions(work_dir=work_dir, ls_port=ls_port, backend_port=backend_port, budget=budget, epochs=epochs, keep_servers=not stop_servers)
    print_result(Demo(options).run())
