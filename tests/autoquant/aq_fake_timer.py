"""A fake timer that answers autoquant timing requests from a table (deterministic tests)."""


class FakeTimer:
    """Deterministic timer: seconds from ``table[(candidate, M)]`` (or with phase / long).

    Lookup order: (name, (N, K)) for a weight shape, (name, M, phase, long), (name, M, phase),
    (name, M), (name,), default.
    Never runs the function, so tests are fast; every request is recorded.
    """

    def __init__(self, table=None, default=1.0):
        self.table = dict(table or {})
        self.default = default
        self.requests = []

    def __call__(self, fn, req):
        self.requests.append(req)
        m = req.act_shape[0]
        for key in ((req.candidate, tuple(req.weight_shape)), (req.candidate, m, req.phase, req.long), (req.candidate, m, req.phase), (req.candidate, m), (req.candidate,)):
            if key in self.table:
                return self.table[key]
        return self.default

    def calls(self, candidate=None, phase=None, long=None):
        return [
            r for r in self.requests
            if (candidate is None or r.candidate == candidate)
            and (phase is None or r.phase == phase)
            and (long is None or r.long == long)
        ]


def assert_choices_follow_timing(rep):
    """Each layer keeps its fastest timed candidate, unless the whole-model check at finalize
    replaced the plan by a faster variant (and said so, per layer and in the report)."""
    for lr in rep.layers.values():
        timed = [c for c in lr.candidates if c.weighted_time is not None]
        if lr.reason.startswith("end-to-end check:"):
            assert rep.validation_note.endswith("instead") and lr.result(lr.choice) is not None
        else:
            assert lr.result(lr.choice).weighted_time == min(c.weighted_time for c in timed)
