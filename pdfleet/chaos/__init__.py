"""`pdfleet chaos`: run failure scenarios against a fleet and report, node by node, whether
every failure was reported as promised and no request was lost.

`scenario` is the YAML model, `fleet` the fleet under test (started here or reached through a
router), `traffic` the generation load, `checks` the comparison of what happened with what was
expected, `runner` the loop over scenarios and `report` the table, JUnit XML and JSON outputs.
"""
