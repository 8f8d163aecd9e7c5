"""`greet-py`: `{"name": "Ada"}` -> `{"greeting": "Hello, Ada!"}`; anything else is `bad-request`."""

from dataclasses import dataclass

import warren_guest as warren


@dataclass
class Greet:
    name: str


@warren.json_handler
def greet(request: Greet) -> dict:
    if not isinstance(request.name, str):
        raise warren.BadRequest("name must be a string")
    return {"greeting": f"Hello, {request.name}!"}


WitWorld = warren.WitWorld
