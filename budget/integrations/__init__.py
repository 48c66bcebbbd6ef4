"""Drop-in guards for LLM SDK clients, built on budget.client: each call is authorized against the user's
cap, made (with the cheaper model on degrade), and its usage reported, streamed responses included.

- budget.integrations.openai: `guarded(OpenAI() | AsyncOpenAI(), budget, user_id=...)` (`margins[openai]`)
- budget.integrations.anthropic: `guarded(Anthropic() | AsyncAnthropic(), budget, ...)` (`margins[anthropic]`)
- budget.integrations.thread: BudgetThread, a BudgetClient for synchronous code

Importing this package imports no SDK; each SDK module imports only its own SDK.
"""
