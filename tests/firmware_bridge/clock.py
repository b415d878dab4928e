"""A clock the test moves: the session, device and firmware all take their clock as a
callable, by design. (The MicroPython check scripts keep their own copy: they run alone
in a folder that holds only what the board gets.)"""


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now
