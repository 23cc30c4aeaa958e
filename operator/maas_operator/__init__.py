"""The maas-operator: plans MaaSJobs, creates their worker pods and keeps their status honest.

This package never imports torch or user model code; kopf is imported only by `maas_operator.handlers`
(registrations) and `maas_operator.main` (the process). Flow: handlers -> controller -> reconcile (pure:
children, healing, status) -> kube (the API server adapter).
"""
