//! The checks on an image service's `image` and `build`: a name podman takes, and a build
//! context (a folder, or `{ context, dockerfile }`). Whether podman is installed and the
//! folder exists is checked at `up` (that is I/O), not here.

use toml::Spanned;

use super::super::model::{Build, Image};
use super::super::raw::{RawService, RawValue};
use super::Validator;

const IMAGE_HINT: &str =
    "write an image reference in lower case, e.g. image = \"localhost/shop-web\" or \"docker.io/library/nginx:1.25\"";
const BUILD_HINT: &str =
    "write build = \"FOLDER\" or build = { context = \"FOLDER\", dockerfile = \"Dockerfile\" } (paths from the stack file's folder; the Dockerfile's from the context)";

impl Validator<'_> {
    /// The image a service runs: `image`, built from `build` if given; `build` alone names it
    /// `localhost/STACK-SERVICE` (as Compose names what it builds).
    pub(super) fn image(&mut self, field: &str, service: &str, raw: &RawService) -> Option<Image> {
        let build = raw.build.as_ref().and_then(|b| self.build(field, b));
        let name = match &raw.image {
            Some(image) => {
                let text = image.get_ref();
                if let Some(why) = image_name_problem(text) {
                    self.err(image.span(), &format!("{field}.image"), why, IMAGE_HINT);
                    return None;
                }
                text.clone()
            }
            None if raw.build.is_some() => format!("localhost/{}-{service}", self.stack_name),
            None => return None,
        };
        if raw.build.is_some() && build.is_none() {
            return None;
        }
        Some(Image { name, build })
    }

    fn build(&mut self, field: &str, raw: &Spanned<RawValue>) -> Option<Build> {
        let bfield = format!("{field}.build");
        let path = |v: &mut Self, value: &Spanned<RawValue>, key: &str| -> Option<String> {
            let vfield = if key.is_empty() {
                bfield.clone()
            } else {
                format!("{bfield}.{key}")
            };
            match value.get_ref().as_str() {
                Some(text) if !text.trim().is_empty() => {
                    (!v.nul_in(value.span(), &vfield, "the path", text)).then(|| text.to_string())
                }
                Some(_) => {
                    v.err(value.span(), &vfield, "the path is empty", BUILD_HINT);
                    None
                }
                None => {
                    v.err(value.span(), &vfield, "a path must be a string", BUILD_HINT);
                    None
                }
            }
        };
        match raw.get_ref() {
            RawValue::String(_) => Some(Build {
                context: path(self, raw, "")?,
                dockerfile: "Dockerfile".into(),
            }),
            RawValue::Table(table) => {
                let mut ok = true;
                for key in table
                    .keys()
                    .filter(|k| !matches!(k.get_ref().as_str(), "context" | "dockerfile"))
                {
                    self.err(
                        key.span(),
                        &format!("{bfield}.{}", key.get_ref()),
                        format!("unknown build field {:?}", key.get_ref()),
                        "a build takes context and dockerfile only (no args, target or secrets: the Dockerfile only COPYs and sets the command)",
                    );
                    ok = false;
                }
                let Some(context) = table.get("context") else {
                    self.err(raw.span(), &bfield, "build names no context", BUILD_HINT);
                    return None;
                };
                let context = path(self, context, "context");
                let dockerfile = match table.get("dockerfile") {
                    Some(d) => path(self, d, "dockerfile"),
                    None => Some("Dockerfile".into()),
                };
                Some(Build {
                    context: context?,
                    dockerfile: dockerfile?,
                })
                .filter(|_| ok)
            }
            _ => {
                self.err(raw.span(), &bfield, "build must be a folder or a table", BUILD_HINT);
                None
            }
        }
    }
}

/// What makes `name` no image reference podman takes, if anything: empty, upper case, spaces
/// or other characters outside `a-z 0-9 . _ - / : @`, or a leading separator.
fn image_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("image is empty".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/:@".contains(*c)))
    {
        let why = if c.is_ascii_uppercase() {
            "image names are lower case".to_string()
        } else {
            format!("{c:?} cannot be part of an image name")
        };
        return Some(format!("image {name:?} is not a valid name: {why}"));
    }
    if name.starts_with(['.', '_', '-', '/', ':', '@']) {
        return Some(format!(
            "image {name:?} is not a valid name: it starts with a separator"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::super::model::{Build, Image};
    use super::super::super::parse;

    const NET: &str = "name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.0/24\"\n";

    fn errors(text: &str) -> String {
        match parse("plumb.toml", text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(d) => d.to_string(),
        }
    }

    #[test]
    fn an_image_service_runs_its_image_with_or_without_a_command() {
        let p = parse(
            "f",
            &format!("{NET}[services.web]\nimage = \"localhost/shop-web\"\nreplicas = 3\nenv = {{ A = \"1\" }}\n[services.api]\nimage = \"localhost/api:1\"\ncommand = [\"python3\", \"app.py\"]\nworkdir = \"/srv\"\n"),
        )
        .unwrap();
        let web = &p.stack.services["web"];
        assert_eq!(
            web.image,
            Some(Image {
                name: "localhost/shop-web".into(),
                build: None
            })
        );
        let process = web.process.as_ref().unwrap();
        assert!(process.command.is_empty(), "the image's own command");
        assert_eq!(process.image.as_deref(), Some("localhost/shop-web"));
        assert_eq!(process.env["A"], "1");
        let api = p.stack.services["api"].process.as_ref().unwrap();
        assert_eq!(api.command, ["python3", "app.py"]);
        assert_eq!(api.workdir.as_deref(), Some("/srv"));
    }

    #[test]
    fn build_takes_a_folder_or_a_context_and_dockerfile() {
        let p = parse(
            "f",
            &format!("{NET}[services.web]\nbuild = \"web\"\n[services.api]\nimage = \"localhost/api\"\nbuild = {{ context = \"src\", dockerfile = \"api.Dockerfile\" }}\n"),
        )
        .unwrap();
        assert_eq!(
            p.stack.services["web"].image,
            Some(Image {
                name: "localhost/s-web".into(),
                build: Some(Build {
                    context: "web".into(),
                    dockerfile: "Dockerfile".into()
                })
            })
        );
        let api = p.stack.services["api"].image.clone().unwrap();
        assert_eq!(
            (api.name.as_str(), api.build.unwrap().dockerfile.as_str()),
            ("localhost/api", "api.Dockerfile")
        );
    }

    #[test]
    fn bad_images_and_builds_are_refused_where_they_are() {
        let e = errors(&format!("{NET}[services.web]\nimage = \"Localhost/Web\"\n"));
        assert!(
            e.starts_with("plumb.toml:5:9: services.web.image: image \"Localhost/Web\" is not a valid name: image names are lower case"),
            "{e}"
        );
        let e = errors(&format!("{NET}[services.web]\nimage = \"a b\"\n"));
        assert!(e.contains("' ' cannot be part of an image name"), "{e}");
        let e = errors(&format!("{NET}[services.web]\nimage = \"\"\n"));
        assert!(e.contains("services.web.image: image is empty"), "{e}");
        let e = errors(&format!(
            "{NET}[services.web]\nbuild = {{ context = \"w\", args = {{ A = \"1\" }} }}\n"
        ));
        assert!(
            e.starts_with("plumb.toml:5:26: services.web.build.args: unknown build field \"args\""),
            "{e}"
        );
        let e = errors(&format!("{NET}[services.web]\nbuild = {{ dockerfile = \"D\" }}\n"));
        assert!(e.contains("services.web.build: build names no context"), "{e}");
        let e = errors(&format!("{NET}[services.web]\nbuild = 3\n"));
        assert!(
            e.contains("services.web.build: build must be a folder or a table"),
            "{e}"
        );
        let e = errors(&format!("{NET}[services.web]\nbuild = \"\"\n"));
        assert!(e.contains("services.web.build: the path is empty"), "{e}");
        let e = errors(&format!("{NET}[services.web]\nimage = \"w\"\nworkdir = \"app\"\n"));
        assert!(
            e.starts_with("plumb.toml:6:11: services.web.workdir: workdir \"app\" is not an absolute path"),
            "{e}"
        );
        // Without image or command, process fields still need a command.
        let e = errors(&format!("{NET}[services.web]\nenv = {{ A = \"1\" }}\n"));
        assert!(e.contains("env needs a command"), "{e}");
    }
}
