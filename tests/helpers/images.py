"""Runs a command in a built hintkd image as `docker run` would: the image's entry point,
its default command when none is given, a user and volumes. With a Docker engine, `docker
run`; else buildah (chroot isolation), as engine/build_images.sh builds them here."""
import json
import os
import re
import shutil
import subprocess


def tool():
    if os.environ.get("HINTKD_IMAGE_TOOL"):
        return os.environ["HINTKD_IMAGE_TOOL"]
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return "docker"
    return "buildah" if shutil.which("buildah") else None


def exists(image):
    found = tool()
    if found is None:
        return False
    command = [found, "image", "inspect", image] if found == "docker" else [found, "inspect", "--type", "image", image]
    return subprocess.run(command, capture_output=True).returncode == 0


def config(image):
    """The image's OCI config: Entrypoint, Cmd, Env, User, WorkingDir, Volumes."""
    if tool() == "docker":
        raw = json.loads(subprocess.run(["docker", "image", "inspect", image], check=True,
                                        capture_output=True, text=True).stdout)[0]["Config"]
        return {"Entrypoint": raw.get("Entrypoint"), "Cmd": raw.get("Cmd"), "Env": raw.get("Env"),
                "User": raw.get("User"), "WorkingDir": raw.get("WorkingDir"), "Volumes": raw.get("Volumes")}
    raw = json.loads(subprocess.run(["buildah", "inspect", "--type", "image", image], check=True,
                                    capture_output=True, text=True).stdout)
    return raw["OCIv1"]["config"]


def run(image, args=None, volumes=(), user=None, entrypoint=None, timeout=1800):
    """args=None runs the image's default command. volumes: (host, container[, 'ro'])."""
    cfg = config(image)
    user = user or cfg.get("User") or "0"
    mounts = [f"{v[0]}:{v[1]}" + (f":{v[2]}" if len(v) > 2 else "") for v in volumes]
    if tool() == "docker":
        command = ["docker", "run", "--rm", "--user", user]
        for m in mounts:
            command += ["-v", m]
        if entrypoint:
            command += ["--entrypoint", entrypoint[0]]
            args = [*entrypoint[1:], *(args or [])]
        return subprocess.run(command + [image, *(args if args is not None else [])],
                              capture_output=True, text=True, timeout=timeout)
    # buildah run applies the image's environment and working folder, not its entry point
    # or default command: they are put in front here, as a container engine does. With the
    # image's VOLUMEs declared, buildah 1.28 binds only the last of several -v folders
    # (the others get volumes of its own): the working container drops the declarations,
    # and the host folders take their place, as `docker run -v` does.
    container = subprocess.run(["buildah", "from", "--pull=never", image], check=True,
                               capture_output=True, text=True).stdout.strip()
    try:
        for volume in cfg.get("Volumes") or {}:
            subprocess.run(["buildah", "config", "--volume", f"{volume}-", container], check=True,
                           capture_output=True)
        program = list(entrypoint or cfg.get("Entrypoint") or [])
        program += list(args if args is not None else (cfg.get("Cmd") or []))
        command = ["buildah", "run", "--isolation", "chroot", "--user", user]
        for m in mounts:
            command += ["-v", m]
        result = subprocess.run(command + [container, "--", *program], capture_output=True, text=True,
                                timeout=timeout)
        # buildah's own last words on a failed command, not the container's output
        result.stderr = re.sub(r"((^|\n)(Error: exit status|subprocess exited with status) \d+)+\n?$", r"\2",
                               result.stderr)
        return result
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True)
