"""Speech from the real espeak-ng, rendered to WAV files and measured.

This machine has no sound card: the sound card's place is taken by WAV files
(and, to show that reset cuts a sentence off, by a player process that takes
as long as the sound it is given).
"""

import json
import logging
import os
import shutil
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from appliance.core.loop import Appliance
from appliance.engine.synth import synthesize
from appliance.engine.worker import Engine
from appliance.outputs.speech import Sentences, SoundCard, Speaker, Speech, SpeechError, WavFiles
from appliance.persona.spec import Persona, PersonaError
from appliance.system.config import ConfigError
from appliance.system.config import load as load_config
from firmware_bridge.board import messages as m
from firmware_bridge.host.simulator import SimulatedTypewriter
from tests.conftest import typewriter, wait_for, write_persona

# Four sentences (the last ends with the reply), every word once: a scripted model's chain.
TALK = ("Good morrow, gentle friend. The night is young and bright! Will you stay awhile? "
        "Lovers go slowly home\nROMEO:")
SAID = ["Good morrow, gentle friend.", "The night is young and bright!", "Will you stay awhile?",
        "Lovers go slowly home"]


def measure(path: Path):
    """(seconds, RMS level, samples) of a 16-bit mono WAV."""
    with wave.open(str(path)) as w:
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(float)
        return w.getnframes() / w.getframerate(), float(np.sqrt(np.mean(samples**2))), samples


def voiced(path: Path, rate: int = 22050) -> float:
    """Seconds from the first to the last 20 ms frame with sound (the pause after left out)."""
    _, _, x = measure(path)
    n = rate // 50
    frames = x[: len(x) // n * n].reshape(-1, n)
    loud = np.nonzero(np.sqrt((frames**2).mean(axis=1)) > 300)[0]
    return (loud[-1] - loud[0] + 1) / 50


def pitch(path: Path, rate: int = 22050) -> float:
    """Median fundamental frequency (autocorrelation) over the voiced 40 ms frames."""
    _, _, x = measure(path)
    n = int(0.04 * rate)
    found = []
    for i in range(0, len(x) - n, n):
        frame = x[i:i + n] - x[i:i + n].mean()
        if np.sqrt(np.mean(frame**2)) < 1000:
            continue
        ac = np.correlate(frame, frame, "full")[n - 1:]
        low, high = rate // 400, rate // 60
        found.append(rate / (low + int(np.argmax(ac[low:high]))))
    return float(np.median(found))


@pytest.fixture
def speaker(tmp_path):
    """A started speaker writing numbered WAVs; yields (speaker, [(path, text), ...])."""
    made = []
    speaker = Speaker(WavFiles(tmp_path / "speech", on_file=lambda p, t: made.append((p, t))))
    speaker.start()
    yield speaker, made
    speaker.close()


def test_sentences_are_cut_as_soon_as_their_end_is_certain():
    s = Sentences()
    assert s.feed("Hello Mr", 1.0) == []
    assert s.feed(". Smith, it is 3.", 2.0) == [], "Mr. and 3. do not end a sentence"
    assert s.feed("14 now!", 3.0) == [], "the end is certain only when a space follows"
    [first] = s.feed(" Yes", 4.0)
    assert (first.text, first.start, first.arrived) == ("Hello Mr. Smith, it is 3.14 now!", 0, 3.0)
    [second] = s.feed(".\nAnd then", 5.0)
    assert (second.text, second.start) == ("Yes.", 33)
    [last] = s.finish(6.0)
    assert (last.text, last.start, last.arrived) == ("And then", 38, 5.0)
    assert s.finish(7.0) == []


def test_a_long_sentence_is_spoken_up_to_its_last_comma():
    s = Sentences()
    text = "and so " * 20 + "we walked, " + "and we talked "
    [part] = s.feed(text, 1.0)
    assert part.text == " ".join(("and so " * 20 + "we walked,").split())
    assert [x.text for x in s.finish(2.0)] == ["and we talked"]


def test_each_sentence_is_one_wav_in_order_with_sound_as_long_as_its_text(speaker):
    speaker, made = speaker
    said = ["Will you stay awhile?", "Go home.",
            "The night is young and bright, and the stars are out above the garden wall.",
            "Lovers go slowly home"]
    text = " ".join(said)
    for i in range(0, len(text), 3):  # streamed a few characters at a time
        speaker.feed(text[i:i + 3])
    speaker.finish()
    assert wait_for(lambda: speaker.idle)
    assert [t for _, t in made] == said
    assert [p.name for p, _ in made] == ["0001.wav", "0002.wav", "0003.wav", "0004.wav"]
    seconds = []
    for path, _ in made:
        duration, rms, _ = measure(path)
        assert rms > 500, f"{path.name} is silent"
        seconds.append(duration)
    by_length = sorted(range(len(said)), key=lambda i: len(said[i]))
    assert sorted(seconds) == [seconds[i] for i in by_length], "longer text, longer sound"
    assert seconds[2] > 4 * seconds[1]  # 75 characters against 8
    per_char = [voiced(p) / len(t) for (p, _), t in zip(made, said)]
    assert max(per_char) < 2 * min(per_char), f"sound not proportional to text: {per_char}"


def test_the_persona_card_sets_rate_and_pitch(speaker):
    speaker, made = speaker
    line = "The quick brown fox jumps over the lazy dog."
    for speech in (Speech(rate=100), Speech(rate=300), Speech(pitch=10), Speech(pitch=90)):
        speaker.use(speech)
        speaker.say(line)
    assert wait_for(lambda: len(made) == 4 and speaker.idle)
    slow, fast = measure(made[0][0])[0], measure(made[1][0])[0]
    assert 2.0 < slow / fast < 4.0, (slow, fast)
    low, high = pitch(made[2][0]), pitch(made[3][0])
    assert high > 1.4 * low, (low, high)


def test_a_voice_that_does_not_exist_is_one_message_and_speech_goes_on(speaker, caplog):
    speaker, made = speaker
    speaker.use(Speech(voice="no-such-voice"))
    speaker.say("One for the road. Two for the show. Three to get ready.")
    assert wait_for(lambda: len(made) == 3 and speaker.idle)
    assert all(measure(p)[1] > 500 for p, _ in made)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, errors
    assert "'no-such-voice' does not exist in espeak-ng" in errors[0]
    assert "espeak-ng --voices" in errors[0]


PLAYER = ("import sys, time, wave; w = wave.open(sys.argv[1]); "
          "time.sleep(w.getnframes() / w.getframerate())")


def test_reset_cuts_the_sentence_being_played_and_drops_the_rest():
    # The player stands in for the sound card: it takes as long as the sound it is given.
    speaker = Speaker(SoundCard([sys.executable, "-c", PLAYER])).start()
    try:
        speaker.say("The first sentence is rather long, and it goes on for a while. "
                    "The second one never plays. Nor does the third.")
        assert wait_for(lambda: len(speaker.spoken) == 1)
        time.sleep(0.3)  # it is playing now
        stopped = time.monotonic()
        speaker.stop()
        assert wait_for(lambda: speaker.idle, 1.0), "reset must cut the playback off at once"
        assert time.monotonic() - stopped < 1.0
        time.sleep(0.5)
        assert [s.text for s in speaker.spoken] == [
            "The first sentence is rather long, and it goes on for a while."]
        speaker.say("After the reset.")
        assert wait_for(lambda: len(speaker.spoken) == 2 and speaker.idle)
    finally:
        speaker.close()


@pytest.mark.skipif(shutil.which("aplay") is None or SoundCard.present(),
                    reason="needs ALSA's aplay and no sound card")
def test_a_sound_card_that_fails_is_reported_once(caplog):
    speaker = Speaker(SoundCard()).start()
    try:
        speaker.say("Nobody hears this. Nor this.")
        assert wait_for(lambda: len(speaker.spoken) == 2 and speaker.idle)
    finally:
        speaker.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "the sound card did not play speech" in errors[0], errors


# -- in the appliance ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def talk_model(tmp_path_factory) -> Path:
    return synthesize("tiny", tmp_path_factory.mktemp("models") / "talk.gguf", script=TALK)


@pytest.fixture
def talk_rig(tmp_path, talk_model):
    """A typewriter printing at 40 characters a second and an appliance that also speaks."""
    persona = Persona.load(write_persona(tmp_path / "juliet", talk_model,
                                         '[speech]\nvoice = "en-gb"\nrate = 220\n'))
    engine = Engine(persona.model_path, n_ctx=512, n_threads=2).start()
    made = []
    speaker = Speaker(WavFiles(tmp_path / "speech", on_file=lambda p, t: made.append(t))).start()
    sim = SimulatedTypewriter(width=65, cps=40, cr_seconds=0.05, record=True)
    yield persona, engine, speaker, sim, made
    sim.stop()
    speaker.close()
    engine.close()


def test_the_appliance_speaks_each_sentence_when_the_paper_reaches_it(talk_rig):
    persona, engine, speaker, sim, made = talk_rig
    app = Appliance(persona, engine, sim.start(), speaker=speaker).start()
    with app.running():
        assert wait_for(lambda: app.link.up)
        sim.type_text("Hello\n")
        submitted = time.monotonic()
        sim.type_text("\n")
        assert wait_for(lambda: app.replies == 1 and app.idle, 30)
        assert sim.wait_printed(30)
    assert made == SAID
    assert " ".join(sim.paper.text().split()) == "Hello " + " ".join(SAID)
    struck = [t for t, _ in sim.struck if t > submitted]
    for i, spoken in enumerate(speaker.spoken):
        before = len(" ".join(SAID[:i]))  # reply characters before this sentence
        on_paper = sum(1 for t in struck if t <= spoken.started_at)
        # Within a word: the typesetter holds a word back until it knows it fits.
        assert on_paper >= before - 8, f"sentence {i + 1} spoken before the paper reached it"
    assert speaker.spoken[0].first and not any(s.first for s in list(speaker.spoken)[1:])


def test_the_reset_key_silences_the_rest_of_the_reply(talk_rig):
    persona, engine, speaker, sim, made = talk_rig
    sim.cps = 15
    app = Appliance(persona, engine, sim.start(), speaker=speaker).start()
    with app.running():
        assert wait_for(lambda: app.link.up)
        sim.type_text("Hello\n\n")
        assert wait_for(lambda: made == SAID[:1], 10), "the first sentence is spoken at once"
        sim.press(m.KEY_RESET)
        assert wait_for(lambda: app.idle)
        time.sleep(1.0)  # the paper would have reached the second sentence by now
        assert made == SAID[:1]
        assert app.conversation.history == []


def test_speech_alone_prints_nothing_and_the_speech_key_silences_it(talk_rig):
    persona, engine, speaker, sim, made = talk_rig
    app = Appliance(persona, engine, sim.start(), speaker=speaker, printing=False).start()
    with app.running():
        assert wait_for(lambda: app.link.up)
        sim.type_text("Hello\n\n")
        assert wait_for(lambda: app.replies == 1 and app.idle, 30)
        assert made == SAID
        sim.press(m.KEY_TOGGLE_SPEECH)
        assert wait_for(lambda: not speaker.enabled)
        sim.type_text("Again\n\n")
        assert wait_for(lambda: app.replies == 2 and app.idle, 30)
        assert made == SAID, "the speech key turned the voice off"
        sim.press(m.KEY_TOGGLE_SPEECH)
        sim.press(m.KEY_REPRINT)
        assert wait_for(lambda: len(made) == 8 and app.idle, 30)
    assert made == SAID * 2, "in speech-only mode the reprint key says the reply again"
    assert " ".join(sim.paper.text().split()) == "Hello Again", "only what was typed is on paper"


def test_without_espeak_ng_the_demo_says_so_once_and_prints(script_persona, tmp_path):
    hidden = tmp_path / "hidden"  # nor the laptop voice: a pyttsx3 that cannot be imported
    hidden.mkdir()
    (hidden / "pyttsx3.py").write_text("raise ImportError('pyttsx3 is hidden by the test')\n")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable),  # no /usr/bin: no espeak-ng
               XDG_CACHE_HOME=os.environ.get("XDG_CACHE_HOME", "/tmp/typewriter-cache"),
               PYTHONPATH=str(hidden))
    result = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "demo", "--persona", str(script_persona),
         "--type", "Hello", "--speak", "--speech-files", str(tmp_path / "wav")],
        capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "espeak-ng" in line]
    assert len(lines) == 1 and "apt-get install espeak-ng" in lines[0], result.stderr
    assert "morrow" in result.stdout, "the reply is printed all the same"
    assert not list((tmp_path / "wav").glob("*.wav"))


def test_the_demo_speaks_to_wav_files_it_names(script_persona, tmp_path):
    result = typewriter("demo", "--persona", str(script_persona), "--type", "Hello", "--speak",
                        "--speech-files", str(tmp_path / "wav"))
    assert result.returncode == 0, result.stderr
    files = sorted((tmp_path / "wav").glob("*.wav"))
    assert files and all(str(f) in result.stderr for f in files)
    assert measure(files[0])[1] > 500
    assert "morrow" in result.stdout


def test_a_piper_voice_without_piper_tts_is_one_clear_message(tmp_path):
    with pytest.raises(SpeechError, match="piper-tts is not installed: pip install piper-tts"):
        Speaker(WavFiles(tmp_path), piper_model=tmp_path / "voice.onnx").start()


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("table, problem", [
    ('rate = 1000', "speech.rate: must be a whole number from 80 to 450, not 1000"),
    ('pitch = "high"', "speech.pitch: must be a whole number, not 'high'"),
    ('voice = "en gb"', "speech.voice: 'en gb' must be one voice name, like 'en-gb'"),
    ('volume = 3', "speech.volume: unknown setting (known: voice, rate, pitch); remove it"),
])
def test_a_bad_speech_table_on_the_persona_card_is_one_line(tmp_path, script_model, table,
                                                           problem):
    folder = write_persona(tmp_path / "p", script_model, f"[speech]\n{table}\n")
    with pytest.raises(PersonaError) as e:
        Persona.load(folder)
    assert str(e.value) == f"{folder / 'persona.toml'}: {problem}"


def test_the_config_checks_every_speech_and_panel_setting(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('output = "loud"\nspeech_rate = 10\nspeech_pitch = 50\npanel_button = 40\n'
                    'voice = "en-gb"\n')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).splitlines() == [
        f"{path}: output: 'loud' is not one of print, speech, both",
        f"{path}: speech_rate: 10 is outside 80..450",
        f"{path}: panel_button: 40 is outside 0..27",
    ]


def test_run_speaks_as_the_config_says_and_keeps_printing_past_bad_settings(tmp_path,
                                                                           script_persona):
    """A voice that does not exist and a panel on a machine without GPIO: a line each."""
    config = tmp_path / "config.toml"
    wavs = tmp_path / "speech"
    config.write_text(f'output = "both"\nspeech_files = "{wavs}"\nvoice = "no-such-voice"\n'
                      "panel_button = 24\n")
    control = tmp_path / "control.sock"
    with SimulatedTypewriter(cps=2000, cr_seconds=0) as sim:
        app = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "run", "--port", sim.start(), "--persona",
             str(script_persona), "--config", str(config), "--state-dir", str(tmp_path / "s"),
             "--control", str(control), "--personas", str(tmp_path / "personas")],
            stderr=subprocess.PIPE, text=True)
        try:
            assert wait_for(control.exists, 60)
            sim.type_text("Hello\n\n")
            assert wait_for(lambda: "home." in sim.paper.text(), 30)
            assert wait_for(lambda: len(list(wavs.glob("*.wav"))) == 1, 10)
            said = typewriter("ctl", "say", "A word from SSH.", "--control", str(control))
            assert said.returncode == 0, said.stderr
            assert wait_for(lambda: len(list(wavs.glob("*.wav"))) == 2, 10)
            status = json.loads(typewriter("ctl", "status", "--json", "--control",
                                           str(control)).stdout)
            assert len(status["speech_start_s"]) == 2
        finally:
            app.terminate()
            _, stderr = app.communicate(timeout=30)
    assert all(measure(p)[1] > 500 for p in wavs.glob("*.wav"))
    assert "Good morrow" in sim.paper.text()
    errors = [line for line in stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 2, stderr
    assert "voice 'no-such-voice' does not exist in espeak-ng" in errors[0] + errors[1]
    assert "panel off: no GPIO on this machine" in errors[0] + errors[1]
