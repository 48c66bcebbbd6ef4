"""Drop-in guards for LLM SDK clients, built on budget.client: each call is authorized against the user's
cap, made (with the cheaper model on degrade), and its usage reported, streamed responses included.

- budget.integrations.openai: `guarded(OpenAI() | AsyncOpenAI(), budget, user_id=...)` (`margins[openai]`)
  guarding `chat.completions.create`, and `responses.create` (budget.integrations.openai_responses)
- budget.integrations.anthropic: `guarded(Anthropic() | AsyncAnthropic(), budget, ...)` (`margins[anthropic]`)
  guarding `messages.create` and `messages.stream`
- budget.integrations.thread: BudgetThread, a BudgetClient for synchronous code

Any other attribute of a guarded client raises NotGuarded (budget.integrations.refusing): a guarded client
hands out no unguarded call path; its `.unguarded` is the SDK client, for calls made unguarded on purpose.

Importing this package imports no SDK; each SDK module imports only its own SDK.
"""
