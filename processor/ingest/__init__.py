"""What comes in: files that settle in inbox folders (``folder``) and S3 objects announced on SQS
(``sqs``), each handed to the lifecycle once it is whole."""
