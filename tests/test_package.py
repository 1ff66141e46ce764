import guardrefresh


def test_version_is_exposed() -> None:
    assert guardrefresh.__version__.count(".") == 2


def test_generated_code_imports() -> None:
    from guardrefresh.proto import rule_installation as pb

    req = pb.InstallRulesRequest(agent_id="a", rules=[pb.RuleInstance(rule_id="r1")])
    assert pb.InstallRulesRequest.parse(bytes(req)).rules[0].rule_id == "r1"
