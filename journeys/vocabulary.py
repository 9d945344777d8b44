"""The standard touchpoint vocabulary of the contract (channels and types).

Deployments add their own types in the Policies file (``event_types``); the loader uses this to
catch windows waiting for a type nothing will ever send (usually a typo).
"""

STANDARD_CHANNELS = frozenset(
    {"web", "app", "email", "sms", "push", "call_center", "ivr", "chat", "store", "agent", "social"}
)

STANDARD_TOUCHPOINT_TYPES = frozenset(
    {
        "page_view",
        "product_view",
        "search",
        "ad_click",
        "cart_add",
        "cart_remove",
        "cart_cleared",
        "checkout_started",
        "purchase",
        "order_delivered",
        "order_returned",
        "call_started",
        "call_ended",
        "chat_started",
        "chat_ended",
        "survey_response",
        "email_opened",
        "email_clicked",
        "push_opened",
        "sms_clicked",
        "app_login",
        "product_activated",
        "consent_withdrawn",
        "consent_granted",
        "complaint_opened",
        "complaint_resolved",
        "ticket_opened",
        "ticket_closed",
        "review_posted",
        "referral_sent",
        "store_visit",
        "product_question",
    }
)
