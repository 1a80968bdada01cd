from driver_ranker.http_errors import validation_message


def test_field_errors_name_the_field():
    detail = [
        {"type": "int_type", "loc": ["driver_ids", 0], "msg": "Input should be a valid integer"},
        {"type": "missing", "loc": ["request_id"], "msg": "Field required"},
    ]
    assert validation_message(detail) == (
        "driver_ids[0]: Input should be a valid integer; request_id: Field required"
    )


def test_body_errors_say_what_to_send():
    assert "not valid JSON" in validation_message([{"type": "json_invalid", "loc": [], "msg": "x"}])
    message = validation_message([{"type": "model_type", "loc": [], "msg": "Input should be an object"}])
    assert "JSON object with driver_ids" in message
