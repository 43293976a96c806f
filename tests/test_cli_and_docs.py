"""`rapport chat` as a newcomer uses it, the README's promises, and configuration."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bots.cli import build_parser
from engine.config import ConfigError, Settings

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ["hi there!", "my name is Ana", "I like jazz and I work as a nurse", "how was your day?",
          "what music do you like?", "do you have any pets?", "what's my name?", "/profile",
          "what do you know about me?", "ok, bye!"]


def chat(lines, data_dir, user="ana"):
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(RAPPORT_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "bots.cli", "chat", "--user", user],
                          input="\n".join(lines).encode() + b"\n", capture_output=True, env=env, timeout=600,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode().splitlines()


@pytest.mark.slow
def test_scripted_chat_remembers_after_restart(tmp_path):
    out = chat(SCRIPT, tmp_path)
    assert len(out) == len(SCRIPT) and all(line.strip() for line in out)
    assert out[6] == "Your name is Ana."
    assert "i like jazz" in out[7] and "i work as a nurse" in out[7]
    out = chat(["what is my name?", "what do i like?"], tmp_path)
    assert out[0] == "Your name is Ana."
    assert "you like jazz" in out[1]
    assert chat(["what's my name?"], tmp_path, user="someone-else")[0].startswith("You haven't told me")


def test_every_command_is_documented():
    from training.cli import JOBS
    readme = (ROOT / "README.md").read_text()
    for action in build_parser()._subparsers._group_actions:
        for name in action.choices:
            assert f"rapport {name}" in readme, f"`rapport {name}` is not in the README"
    for name in JOBS:
        assert name in readme, f"`rapport-train {name}` is not in the README"


def test_settings_from_env_and_dotenv(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("# comment\nRAPPORT_BOT_NAME='Robin'\nRAPPORT_HISTORY_TURNS=7\nexport REDIS_URL=redis://x:1/0\n")
    s = Settings.from_env({"RAPPORT_HISTORY_TURNS": "9", "RAPPORT_PERSONA": "i like tea | i live in a box"}, dotenv)
    assert (s.bot_name, s.history_turns, s.redis_url) == ("Robin", 9, "redis://x:1/0")
    assert s.persona == ("i like tea", "i live in a box")
    with pytest.raises(ConfigError, match="RAPPORT_HISTORY_TURNS"):
        Settings.from_env({"RAPPORT_HISTORY_TURNS": "many"}, None)
    assert Settings.from_env({"RAPPORT_PROFILE_WEIGHT": "0.25", "RAPPORT_DATA_DIR": "~/x"}, None).profile_weight == 0.25
    assert Settings.from_env({"RAPPORT_DATA_DIR": "~/x"}, None).data_dir == Path("~/x").expanduser()


def test_platform_settings_live_with_the_adapters(tmp_path):
    from bots.settings import DiscordSettings, TelegramSettings
    dotenv = tmp_path / ".env"
    dotenv.write_text("TELEGRAM_BOT_TOKEN=123456:secret-token-from-dotenv\nRAPPORT_TELEGRAM_WEBHOOK_PORT=9000\n")
    tg = TelegramSettings.from_env({"RAPPORT_TELEGRAM_MODE": "webhook"}, dotenv)
    assert (tg.token, tg.mode, tg.webhook_port) == ("123456:secret-token-from-dotenv", "webhook", 9000)
    assert "secret-token" not in repr(tg)  # tokens never reach a log through a repr
    assert DiscordSettings.from_env({}, None).token is None
    with pytest.raises(ConfigError, match="RAPPORT_TELEGRAM_MODE must be polling or webhook"):
        TelegramSettings.from_env({"RAPPORT_TELEGRAM_MODE": "push"}, None)


def test_readme_commands_and_ci_agree():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    assert blocks[0].endswith("rapport chat") and "pip install -e ." in blocks[0]
    assert blocks[1] in (ROOT / ".ci" / "run").read_text()
    settings_code = (ROOT / "engine" / "config.py").read_text() + (ROOT / "bots" / "settings.py").read_text()
    for var in re.findall(r'"(RAPPORT_[A-Z_]+|REDIS_URL|TELEGRAM_BOT_TOKEN|DISCORD_BOT_TOKEN)"', settings_code):
        assert f"`{var}`" in readme, f"{var} is not documented in the README"


def test_deployment_files_agree_with_the_cli_and_the_docs():
    """Docker cannot run here: check that the compose file parses, that every service runs a real
    `rapport` subcommand, and that every variable it or .env.example uses is documented."""
    import yaml
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    readme = (ROOT / "README.md").read_text()
    commands = {name for action in build_parser()._subparsers._group_actions for name in action.choices}
    assert {"redis", "telegram", "discord"} <= set(compose["services"])
    for name, service in compose["services"].items():
        assert "healthcheck" in service, name
        if service.get("build"):
            program, sub = service["command"][:2]
            assert program == "rapport" and sub in commands, name
            port = service["environment"]["RAPPORT_METRICS_PORT"]  # the health check asks the bot itself
            assert f"127.0.0.1:{port}/readyz" in " ".join(service["healthcheck"]["test"]), name
    assert "redis-data" in compose["volumes"]
    used = set(re.findall(r"\$\{([A-Z_]+)", (ROOT / "docker-compose.yml").read_text()))
    used |= set(re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    used |= set(re.findall(r"\b(RAPPORT_[A-Z_]+)=", (ROOT / "Dockerfile").read_text()))
    for var in used:
        assert f"`{var}`" in readme, f"{var} is not documented in the README"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "USER rapport" in dockerfile and "COPY exported_models" in dockerfile
