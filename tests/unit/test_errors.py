from broker_gateway.errors import (
    PROBLEMS,
    BrokerUnavailable,
    GatewayError,
    NotFound,
    TopicNotFound,
    problem_body,
    problem_for,
)


def test_every_gateway_error_maps_to_a_stable_snake_case_code() -> None:
    for cls, problem in PROBLEMS.items():
        assert issubclass(cls, GatewayError)
        assert problem.code.replace("_", "").isalpha() and problem.code.islower()
        assert 400 <= problem.status < 600


def test_contract_codes_keep_their_statuses() -> None:
    expected = {
        "invalid_request": 422,
        "topic_not_found": 404,
        "subscription_not_found": 404,
        "tenant_not_found": 404,
        "payload_too_large": 413,
        "broker_unavailable": 503,
        "broker_timeout": 504,
    }
    by_code = {p.code: p.status for p in PROBLEMS.values()}
    assert {code: by_code[code] for code in expected} == expected


def test_an_error_without_its_own_row_inherits_its_parents_problem() -> None:
    class GoneFishing(NotFound):
        pass

    assert problem_for(GoneFishing("x")).code == "not_found"
    assert problem_for(TopicNotFound("x")).code == "topic_not_found"


def test_problem_body_has_the_rfc9457_fields_and_a_code() -> None:
    error = BrokerUnavailable("down", retry_after_s=5)
    body = problem_body(problem_for(error), error.detail)
    assert body == {
        "type": "urn:broker-gateway:problem:broker_unavailable",
        "title": "Broker unavailable",
        "status": 503,
        "detail": "down",
        "code": "broker_unavailable",
    }
