"""The Monitor API emulator (test and demo tooling): the wire text, the component, its command line."""

from agent.exceptions import AuthenticationError
from agent.lab.emulator.component import run
from agent.lab.emulator.options import EmulatorOptions, EmulatorReport, add_arguments, options_from_args
from agent.lab.emulator.wire import CONDITIONS, KINDS, NAMESPACE

__all__ = [
    "CONDITIONS",
    "KINDS",
    "NAMESPACE",
    "AuthenticationError",
    "EmulatorOptions",
    "EmulatorReport",
    "add_arguments",
    "options_from_args",
    "run",
]
