"""The maas-operator: plans MaaSJobs, creates their worker pods and keeps their status honest.

This package never imports torch or user model code; kopf is imported only by `maas_operator.main`.
"""
