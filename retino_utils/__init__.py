"""retino: diabetic retinopathy grading with ResNets, from data layouts to a rendered report."""

__version__ = "0.1.0"

GRADES = (0, 1, 2, 3, 4)
GRADE_NAMES = ("No DR", "Mild", "Moderate", "Severe", "Proliferative")
NUM_CLASSES = len(GRADES)
