"""The laptop voice (pyttsx3, a child process per sentence), through its Linux driver.

pyttsx3's espeak driver needs libespeak-ng; where it cannot start, these tests skip.
This machine has no sound card: WAV files, and a player that takes as long as its sound.
"""

import os
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from appliance.outputs import laptop_voice
from appliance.outputs.laptop_voice import LaptopVoice, LaptopVoiceError
from appliance.outputs.speech import SoundCard, Speaker, Speech, WavFiles
from tests.conftest import wait_for


def _driver_problem():
    try:
        LaptopVoice()
    except LaptopVoiceError as e:
        return str(e)
    return None


PROBLEM = _driver_problem()
needs_driver = pytest.mark.skipif(PROBLEM is not None,
                                  reason=f"pyttsx3's espeak driver does not work here: {PROBLEM}")


def seconds_and_level(path: Path):
    with wave.open(str(path)) as w:
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(float)
        return w.getnframes() / w.getframerate(), float(np.sqrt(np.mean(x**2)))


@needs_driver
def test_each_sentence_is_one_wav_in_order_with_sound(tmp_path):
    made = []
    speaker = Speaker(WavFiles(tmp_path, on_file=lambda p, t: made.append((p, t))),
                      voice=LaptopVoice).start()
    try:
        speaker.say("Good morrow, gentle friend. The night is young! Will you stay?")
        assert wait_for(lambda: speaker.idle and len(made) == 3, 30)
    finally:
        speaker.close()
    assert [t for _, t in made] == ["Good morrow, gentle friend.", "The night is young!",
                                    "Will you stay?"]
    for path, _ in made:
        seconds, level = seconds_and_level(path)
        assert seconds > 0.5 and level > 300, path


@needs_driver
def test_rate_and_voice_come_from_the_speech_settings(tmp_path):
    voice = LaptopVoice()
    lengths = {}
    for rate in (100, 300):
        voice.configure(Speech("en-gb", rate, 50))
        voice.render("The night is young and bright over fair Verona.", tmp_path / f"{rate}.wav")
        lengths[rate] = seconds_and_level(tmp_path / f"{rate}.wav")[0]
    assert lengths[100] > 1.8 * lengths[300], lengths
    voice.configure(Speech("no-such-voice", 175, 50))  # the engine's own voice instead
    voice.render("Still speaking.", tmp_path / "default.wav")
    assert seconds_and_level(tmp_path / "default.wav")[1] > 300


PLAYER = ("import sys, time, wave; w = wave.open(sys.argv[1]); "
          "time.sleep(w.getnframes() / w.getframerate())")


@needs_driver
def test_reset_kills_the_sentence_being_played_and_drops_the_rest():
    speaker = Speaker(SoundCard([sys.executable, "-c", PLAYER]), voice=LaptopVoice).start()
    try:
        speaker.say("The first sentence is rather long, and it goes on for a while. "
                    "The second one never plays.")
        assert wait_for(lambda: len(speaker.spoken) == 1, 10)
        time.sleep(0.3)
        stopped = time.monotonic()
        speaker.stop()
        assert wait_for(lambda: speaker.idle, 1.0) and time.monotonic() - stopped < 1.0
        time.sleep(0.5)
        assert len(speaker.spoken) == 1
    finally:
        speaker.close()


def test_a_hung_engine_is_killed_at_its_limit(tmp_path):
    hang = tmp_path / "python"
    hang.write_text("#!/bin/sh\nexec sleep 30\n")
    hang.chmod(0o755)
    started = time.monotonic()
    with pytest.raises(LaptopVoiceError, match="hung on 'Ready.' for 0.5 s and was stopped"):
        LaptopVoice(python=str(hang), timeout=0.5)
    assert time.monotonic() - started < 5


def test_without_pyttsx3_one_message_names_both_fixes(monkeypatch):
    monkeypatch.setattr(laptop_voice.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LaptopVoiceError, match=r"apt-get install espeak-ng, or pip install "
                                               r"'typewriter-appliance\[laptop\]'"):
        LaptopVoice()


@needs_driver
def test_the_demo_without_espeak_ng_speaks_with_the_laptop_voice(script_persona, tmp_path):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable),  # no /usr/bin: no espeak-ng
               XDG_CACHE_HOME=os.environ.get("XDG_CACHE_HOME", "/tmp/typewriter-cache"))
    result = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "demo", "--persona", str(script_persona),
         "--type", "Hello", "--speak", "--speech-files", str(tmp_path / "wav")],
        capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    files = sorted((tmp_path / "wav").glob("*.wav"))
    assert files and all(str(f) in result.stderr for f in files), result.stderr
    assert seconds_and_level(files[0])[1] > 300
    assert "morrow" in result.stdout
