-- Run by the WMS's owner once, after the WMS schema exists. Idempotent.
-- Least-privilege capture login for Debezium's MariaDB connector: read the wms database and the
-- binlog; write only its own signal table (incremental-snapshot watermarks).
-- Placeholders @capture_user / @capture_password are set by the caller.
USE wms;
CREATE TABLE IF NOT EXISTS debezium_signal (
    id   VARCHAR(42) PRIMARY KEY,
    type VARCHAR(32) NOT NULL,
    data VARCHAR(2048)
);

SET @create = CONCAT('CREATE USER IF NOT EXISTS ', QUOTE(@capture_user), '@''%'' IDENTIFIED BY ', QUOTE(@capture_password));
PREPARE stmt FROM @create; EXECUTE stmt; DEALLOCATE PREPARE stmt;
SET @alter = CONCAT('ALTER USER ', QUOTE(@capture_user), '@''%'' IDENTIFIED BY ', QUOTE(@capture_password));
PREPARE stmt FROM @alter; EXECUTE stmt; DEALLOCATE PREPARE stmt;
SET @g1 = CONCAT('GRANT RELOAD, SHOW DATABASES, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO ', QUOTE(@capture_user), '@''%''');
PREPARE stmt FROM @g1; EXECUTE stmt; DEALLOCATE PREPARE stmt;
SET @g2 = CONCAT('GRANT SELECT ON wms.* TO ', QUOTE(@capture_user), '@''%''');
PREPARE stmt FROM @g2; EXECUTE stmt; DEALLOCATE PREPARE stmt;
SET @g3 = CONCAT('GRANT INSERT, UPDATE, DELETE ON wms.debezium_signal TO ', QUOTE(@capture_user), '@''%''');
PREPARE stmt FROM @g3; EXECUTE stmt; DEALLOCATE PREPARE stmt;
