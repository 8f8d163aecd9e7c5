// `greet-js`: {"name": "Ada"} -> {"greeting": "Hello, Ada!"}; anything else is `bad-request`.
import { jsonHandler, BadRequest } from "warren-guest";

export const handle = jsonHandler((input) => {
  if (typeof input?.name !== "string") throw new BadRequest("expected {\"name\": <string>}");
  return { greeting: `Hello, ${input.name}!` };
});
