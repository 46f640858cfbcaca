"""Reports: analysis results as a PDF to send (``cka-lab report``)."""

from cka_lab.reports.pdf import ModelInfo, findings, model_info, write_report

__all__ = ["ModelInfo", "findings", "model_info", "write_report"]
