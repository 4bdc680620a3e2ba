"""The parts of the chaos soak (``bench/soak.py``).

* :mod:`.schedule`: the seeded plan (stream segments and faults), pure;
* :mod:`.emulate`: the Monitor API emulator process the soak runs, recording what it sends;
* :mod:`.receiver`: the webhook receiver, with its fault modes;
* :mod:`.procs`: child processes, the tmpfs, the disk filler and the outside writer;
* :mod:`.observe`: what the soak watches while it runs (rows, sends, deliveries, RSS);
* :mod:`.invariants`: the checks, pure functions over what was sent, stored and delivered;
* :mod:`.report`: the tables and the JSON summary;
* :mod:`.run`: the orchestration.
"""
